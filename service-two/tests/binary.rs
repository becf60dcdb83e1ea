#[path = "../../common/tests/support/service_binary.rs"]
mod service_binary;

#[tokio::test]
async fn answers_its_path_checks_its_health_and_stops_on_sigterm() {
    service_binary::check(
        env!("CARGO_BIN_EXE_service-two"),
        "/service2",
        "Response from Microservice 2",
    )
    .await;
}
