//! `flowctl`: operate and use a flow node from outside its process,
//! through its admin API (see `docs/operations.md`). The commands are
//! `flow_runtime::runner::admin::cli`; this binary runs them on its
//! arguments and exits with their code.

use std::process::ExitCode;

fn main() -> ExitCode {
    let code = flow_runtime::runner::admin::cli::run(
        std::env::args_os(),
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    ExitCode::from(code)
}
