//! `make bench`: the benchmark harness. Sizes come from `SWITCHYARD_BENCH_*` variables; see
//! `harness::Config::from_env`. Prints a table and writes `target/bench/results.json`.

use std::process::ExitCode;

mod harness;

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = match harness::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match harness::run(&config).await {
        Ok(report) => {
            print!("{}", report.table());
            println!("results: {}", config.output.display());
            if report.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
