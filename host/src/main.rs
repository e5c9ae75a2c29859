fn main() -> std::process::ExitCode {
    stagecraft::cli::main()
}
