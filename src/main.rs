fn main() -> std::process::ExitCode {
    dropdeploy::cli::main()
}
