//! `nodemesh-cni`: the CNI plugin binary. A runtime runs it with the command in the environment
//! and the network config on stdin; it prints the result, or the spec's error object and exits
//! non-zero (see the library, `nodemesh_cni`).

use std::io::Read as _;
use std::process::ExitCode;

use nodemesh_cni::{CniError, Invocation, LocalCapture, Output, run};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = read
        .map_err(|source| CniError::Io {
            path: "stdin".into(),
            source,
        })
        .and_then(|_| Invocation::from_env())
        .and_then(|inv| run(&inv, &stdin, &LocalCapture::default()));
    match outcome {
        Ok(Output::Json(value)) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Ok(Output::Nothing) => ExitCode::SUCCESS,
        Err(error) => {
            println!("{}", error.to_json(&requested_version(&stdin)));
            eprintln!("nodemesh-cni: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The `cniVersion` of the config on stdin, to answer in; `1.0.0` when there is none.
fn requested_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "1.0.0".to_owned())
}
