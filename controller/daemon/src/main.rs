//! agentcgd: owns agentcg's cgroup subtree and serves the HTTP+JSON API on a unix
//! socket. The work is done by `agentcg_core::controller`; this binary adds the
//! socket, timers (timeouts, the abandoned-call sweep) and kernel telemetry.

mod api;
mod health;
mod logging;
mod membpf;
mod memory;
mod metrics;
mod policy;
mod queue;
mod reload;
mod sched;
mod server;
mod status;
mod supervisor;
mod systemd;
mod telemetry;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agentcg_core::controller::{AdoptReport, Controller, StartOptions};
use agentcg_core::events::EventBus;
use agentcg_core::policy::Policy;
use agentcg_core::record::{CallRecord, Outcome};
use agentcg_daemon::{args, root};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = args::Args::parse();
    logging::init();
    let notifier = Arc::new(systemd::Notifier::from_env());
    match run(args, &notifier).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            notifier.send(&format!("STATUS=failed: {e}"));
            tracing::error!("{e}");
            eprintln!("agentcgd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: args::Args, notifier: &Arc<systemd::Notifier>) -> Result<(), String> {
    let placement = root::resolve(&args.root)?;
    if let Some(leaf) = &placement.daemon_leaf {
        root::move_into(leaf)?;
    }
    let root = placement.root.as_path();
    let (policy_file, policy_text, policy_source) = policy_source(&args)?;
    let policy = Policy::parse(&policy_text, &policy_source).map_err(|e| e.to_string())?;
    let wakers = Arc::new(supervisor::Wakers::default());
    let on_written = {
        let wakers = wakers.clone();
        Arc::new(move |record: &CallRecord, result: Result<(), String>| {
            if let Err(e) = result {
                let call_id = record.call_id;
                tracing::error!(call_id, "record not written (kept, retried): {e}");
            }
            // A call that went wrong is worth a line in the journal; the history and
            // the event stream hold every call (an `ok` line per call at 50 calls/s
            // cost agentcgd ~3 % of its CPU in the VM profile).
            let (call_id, outcome) = (record.call_id, record.outcome.as_str());
            if record.outcome == Outcome::Ok {
                tracing::debug!(call_id, session = %record.session, outcome, "call ended");
            } else {
                tracing::info!(call_id, session = %record.session, outcome, "call ended");
            }
            wakers.ended.notify_waiters();
        })
    };
    let events = Arc::new(
        EventBus::open(&args.state_dir)
            .map_err(|e| format!("cannot number events in {}: {e}", args.state_dir.display()))?,
    );
    // The metrics count every event from the first (recovered calls at start included).
    let counters = Arc::new(metrics::Counters::default());
    counters.observe(&events);
    let (mut controller, adopted) = Controller::start(
        policy,
        StartOptions {
            root,
            state_dir: &args.state_dir,
            on_written,
            events: events.clone(),
        },
    )
    .map_err(|e| format!("cannot take over {}: {e}", root.display()))?;
    if let Some(leaf) = &placement.daemon_leaf
        && let Err(e) = root::protect(leaf, args.daemon_memory_min)
    {
        tracing::warn!("{e}; the daemon runs without its own memory protection");
    }
    log_adoption(&adopted);
    let cpu_policy = controller.policy().cpu;
    let telemetry = match telemetry::load() {
        Ok((hooks, loaded)) => {
            let processes = hooks.processes();
            controller.add_hooks(Box::new(hooks));
            Ok((loaded, processes))
        }
        Err(why) => {
            tracing::warn!(
                "telemetry BPF programs not loaded ({why}); calls run without process counts"
            );
            Err(why)
        }
    };
    let (sender, signals) = tokio::sync::mpsc::unbounded_channel();
    let mem_bpf = match membpf::start(
        &controller.layout().root(),
        &controller.policy().memory,
        sender.clone(),
    ) {
        Ok(b) => {
            controller.add_hooks(Box::new(membpf::MemBpfHooks {
                watch: b.watch.clone(),
                root: controller.layout().root().clone(),
                pressure_at: controller.policy().memory.pressure_at,
            }));
            Some(b)
        }
        Err(why) => {
            tracing::warn!(
                "memory BPF programs not loaded ({why}); the memory response runs on PSI triggers alone"
            );
            None
        }
    };
    let tele_handle = telemetry.as_ref().ok().map(|(t, _)| t.clone());
    let shared = Arc::new(Mutex::new(controller));
    let telemetry =
        telemetry.map(|loaded| telemetry::start(loaded, shared.clone(), wakers.clone()));
    let memory_status = memory::SharedMemoryStatus::default();
    let memory_hooks = memory::start(
        shared.clone(),
        memory::Sources {
            signals,
            sender,
            bpf: mem_bpf.as_ref().map(|b| b.watch.clone()),
            events: events.clone(),
        },
        memory_status.clone(),
    );
    if let Ok(mut c) = shared.lock() {
        c.add_hooks(Box::new(memory_hooks));
    }
    let mut status = status::Status::probe(root, telemetry);
    let sched_ext_present = status.kernel.sched_ext_state.is_some();
    let mem_watch = mem_bpf.as_ref().map(|b| b.watch.clone());
    status.sched = sched::start(
        shared.clone(),
        cpu_policy,
        sched_ext_present,
        mem_bpf.map(|b| b.state),
        events.clone(),
    );
    status.memory = memory_status;
    let health = Arc::new(health::Health::new(supervisor::beat_every(
        systemd::watchdog_from_env(),
    )));
    if let Some(addr) = args.metrics_listen.0 {
        let registry = metrics::registry(
            &counters,
            Box::new(metrics::ControllerSessions(shared.clone())),
            metrics::KernelSources {
                telemetry: tele_handle,
                memory: mem_watch,
                sched: status.sched.clone(),
                bus: events.clone(),
            },
        );
        metrics::start(addr, registry, health.clone()).await;
    }
    tracing::info!(root = %root.display(), socket = %args.socket.display(), "agentcgd starting");
    let (listener, activated) = match systemd::activated_listener().map_err(|e| e.to_string())? {
        Some(listener) => (listener, true),
        None => {
            let listener = supervisor::bind(&args.socket)?;
            supervisor::secure_socket(&args.socket, &args.socket_group, args.socket_mode)?;
            (listener, false)
        }
    };
    let store = Arc::new(policy::PolicyStore::new(
        policy_file,
        policy_text,
        policy_source,
        &args.state_dir,
        shared.clone(),
        events.clone(),
    ));
    reload::on_sighup(store.clone());
    if let Err(why) = reload::watch_file(store.clone()) {
        tracing::warn!("the policy file is not watched ({why}); SIGHUP reloads it");
    }
    let state = api::AppState::new(
        shared.clone(),
        status,
        wakers.clone(),
        events.clone(),
        store,
        &args.admin_group,
    );
    tokio::spawn(queue::pump_loop(
        shared.clone(),
        wakers.clone(),
        state.queue(),
    ));
    tokio::spawn(supervisor::sweep_loop(shared.clone(), wakers.clone()));
    tokio::spawn(supervisor::deadline_loop(shared.clone(), wakers.clone()));
    tokio::spawn(supervisor::watchdog_loop(
        shared.clone(),
        notifier.clone(),
        systemd::watchdog_from_env(),
        health.clone(),
    ));
    notifier.send(&format!(
        "READY=1\nSTATUS={}",
        supervisor::status_line(&shared)
    ));
    health.set_ready();
    let ending = args
        .stop_ends_calls
        .then(|| (shared.clone(), wakers.clone()));
    let app = api::router(state)
        .layer(axum::middleware::from_fn(server::track))
        .into_make_service_with_connect_info::<server::Conn>();
    let front = server::Front::new(listener, server::Limits::from_args(&args));
    let notifier_on_stop = notifier.clone();
    let server = axum::serve(front, app).with_graceful_shutdown(async move {
        supervisor::shutdown_signal().await;
        notifier_on_stop.send("STOPPING=1");
        // Ended before the server drains, so that clients waiting on a call get its end.
        if let Some((shared, wakers)) = ending {
            notifier_on_stop.send("STATUS=ending every running call");
            supervisor::end_all_calls(&shared, &wakers).await;
        }
        // Followers of the event stream would hold the shutdown open.
        events.close();
    });
    let result = server
        .await
        .map_err(|e| format!("serving {}: {e}", args.socket.display()));
    if !activated {
        let _ = std::fs::remove_file(&args.socket);
    }
    tracing::info!("agentcgd stopped");
    result
}

/// The policy file (where API changes are written), its text and where that came
/// from: `--policy FILE`; else `<state-dir>/policy.toml` if an earlier run wrote one;
/// else the embedded default (and changes create that file).
fn policy_source(args: &args::Args) -> Result<(PathBuf, String, String), String> {
    if let Some(path) = &args.policy {
        let text = agentcg_core::policy::read_text(path).map_err(|e| e.to_string())?;
        return Ok((path.clone(), text, path.display().to_string()));
    }
    let file = args.state_dir.join("policy.toml");
    if file.exists() {
        let text = agentcg_core::policy::read_text(&file).map_err(|e| e.to_string())?;
        let source = file.display().to_string();
        return Ok((file, text, source));
    }
    Ok((
        file,
        agentcg_core::policy::DEFAULT_POLICY.to_string(),
        "embedded default".into(),
    ))
}

/// Says what the start took over from a previous run.
fn log_adoption(r: &AdoptReport) {
    if !r.adopted.is_empty() {
        tracing::info!(calls = ?r.adopted, tool_gone = ?r.already_exited, "re-adopted running calls");
    }
    if !r.recovered.is_empty() {
        tracing::info!(calls = ?r.recovered, "records of calls that had ended, recovered from their state files");
    }
    if !r.lost.is_empty() {
        tracing::warn!(calls = ?r.lost, "calls whose cgroup was gone at start: recorded as abandoned");
    }
    if !r.orphans.is_empty() {
        tracing::warn!(cgroups = ?r.orphans, "orphan call cgroups (no state): killed and removed");
    }
    for bad in &r.bad_state_files {
        tracing::warn!("dropped an unreadable running-call state file: {bad}");
    }
    if let Some(i) = &r.history_import {
        tracing::info!(records = i.records, from = %i.from.display(), "imported the history of an earlier version (renamed to calls.jsonl.imported)");
        if !i.bad_lines.is_empty() {
            tracing::warn!(lines = ?i.bad_lines, from = %i.from.display(), "history lines that did not parse were skipped");
        }
    }
}
