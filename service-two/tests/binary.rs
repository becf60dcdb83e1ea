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

#[tokio::test]
async fn bad_settings_are_one_line_errors_and_never_a_panic() {
    service_binary::check_configuration_errors(env!("CARGO_BIN_EXE_service-two")).await;
}
