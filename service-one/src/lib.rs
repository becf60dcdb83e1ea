use common::microservice::Microservice;

pub const SERVICE: Microservice = Microservice {
    name: "service-one",
    path: "service1",
    message: "Response from Microservice 1",
    default_port: 5001,
};
