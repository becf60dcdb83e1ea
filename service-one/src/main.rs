fn main() -> std::process::ExitCode {
    service_one::SERVICE.main()
}
