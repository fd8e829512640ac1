//! The `mock-mta` binary (to be written).
fn main() -> std::process::ExitCode {
    eprintln!("mock-mta: not yet implemented");
    std::process::ExitCode::from(1)
}
