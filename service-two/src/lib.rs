use common::microservice::Microservice;

pub const SERVICE: Microservice = Microservice {
    name: "service-two",
    path: "service2",
    message: "Response from Microservice 2",
    default_port: 5002,
};
