fn main() -> std::process::ExitCode {
    dynfs::cli::main()
}
