fn main() -> std::process::ExitCode {
    service_two::SERVICE.main()
}
