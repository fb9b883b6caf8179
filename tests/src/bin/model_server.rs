//! `model_server SCRIPT.json [RECORD.jsonl]`: serves a scripted model (Anthropic
//! Messages, OpenAI chat and Responses APIs, see `agentcg_vmtests::model_server`) on a
//! free loopback port, prints its URL on stdout and serves until killed.

use agentcg_vmtests::model_server::{ModelServer, Turn};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(script_path) = args.next() else {
        eprintln!("usage: model_server SCRIPT.json [RECORD.jsonl]");
        return std::process::ExitCode::from(2);
    };
    let script = std::fs::read_to_string(&script_path)
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
        .and_then(|v| Turn::script_from_json(&v));
    let script = match script {
        Ok(s) => s,
        Err(e) => {
            eprintln!("model_server: {}: {e}", script_path.to_string_lossy());
            return std::process::ExitCode::from(2);
        }
    };
    match ModelServer::start(script, args.next().map(Into::into)) {
        Ok(server) => {
            println!("{}", server.url());
            loop {
                std::thread::park();
            }
        }
        Err(e) => {
            eprintln!("model_server: binding 127.0.0.1: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
