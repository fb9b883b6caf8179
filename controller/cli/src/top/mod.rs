//! `agentcg top`: a live view of the host (sessions, their running calls, the latest
//! events), fed by polling `/v1/status`, `/v1/sessions` and `/v1/running` once a second
//! and by the event stream. `q`, Esc or Ctrl-C quits and restores the terminal.
//! `--once` prints one frame as text (no terminal needed; scripts, tests).

mod model;
mod view;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event as Key, KeyCode, KeyEventKind, KeyModifiers};

use crate::client::{Client, ClientError};
use model::{Model, Snapshot};

/// How often the daemon is polled.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Print one frame as text and exit.
    #[arg(long)]
    once: bool,
    /// Width of the `--once` frame.
    #[arg(long, default_value_t = 80, requires = "once")]
    width: u16,
    /// Height of the `--once` frame.
    #[arg(long, default_value_t = 24, requires = "once")]
    height: u16,
}

/// What the feeder threads send to the screen.
enum Feed {
    Snapshot(Box<Snapshot>),
    Error(String),
    Event(String),
}

fn snapshot(client: &Client) -> Result<Snapshot, ClientError> {
    let status = client.get("/v1/status")?;
    let sessions = serde_json::from_value(client.get("/v1/sessions")?)
        .map_err(|e| ClientError::Protocol(format!("sessions: {e}")))?;
    let running = serde_json::from_value(client.get("/v1/running")?)
        .map_err(|e| ClientError::Protocol(format!("running calls: {e}")))?;
    Ok(Snapshot {
        at: Instant::now(),
        status,
        sessions,
        running,
    })
}

pub fn main(socket: &Path, args: TopArgs) -> ExitCode {
    if args.once {
        return once(socket, &args);
    }
    let (tx, rx) = channel();
    spawn_poller(socket.to_path_buf(), tx.clone());
    spawn_events(socket.to_path_buf(), tx);
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, &rx);
    ratatui::restore();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentcg: top: {e}");
            ExitCode::from(crate::EXIT_AGENTCG)
        }
    }
}

/// The screen loop: redraws on data or a key, quits on `q`, Esc or Ctrl-C.
fn run(terminal: &mut ratatui::DefaultTerminal, rx: &Receiver<Feed>) -> std::io::Result<()> {
    let mut model = Model::default();
    loop {
        while let Ok(feed) = rx.try_recv() {
            apply(&mut model, feed);
        }
        terminal.draw(|f| view::draw(f, &model))?;
        if event::poll(Duration::from_millis(250))?
            && let Key::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
            && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
        {
            return Ok(());
        }
    }
}

fn apply(model: &mut Model, feed: Feed) {
    match feed {
        Feed::Snapshot(s) => model.update(*s),
        Feed::Error(e) => model.error = Some(e),
        Feed::Event(line) => model.event(&line),
    }
}

fn spawn_poller(socket: PathBuf, tx: Sender<Feed>) {
    std::thread::spawn(move || {
        let client = Client::new(&socket);
        loop {
            let feed = match snapshot(&client) {
                Ok(s) => Feed::Snapshot(Box::new(s)),
                Err(e) => Feed::Error(e.to_string()),
            };
            if tx.send(feed).is_err() {
                return;
            }
            std::thread::sleep(POLL);
        }
    });
}

/// Follows the event stream from the oldest kept event, reconnecting after a restart.
fn spawn_events(socket: PathBuf, tx: Sender<Feed>) {
    std::thread::spawn(move || {
        let client = Client::new(&socket);
        let mut since = 0;
        loop {
            let _ = client.stream_lines(&format!("/v1/events?since={since}"), |line| {
                if let Some(seq) = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .filter(|&s| s > 0)
                {
                    since = seq;
                }
                tx.send(Feed::Event(line.to_string())).is_ok()
            });
            std::thread::sleep(POLL);
        }
    });
}

/// One frame, printed as text.
fn once(socket: &Path, args: &TopArgs) -> ExitCode {
    let client = Client::new(socket);
    let mut model = Model::default();
    match snapshot(&client) {
        Ok(s) => model.update(s),
        Err(e) => return crate::fail(&e),
    }
    let replay = client.stream_lines("/v1/events?since=0&follow=false", |line| {
        model.event(line);
        true
    });
    if let Err(e) = replay {
        return crate::fail(&e);
    }
    let mut terminal = match Terminal::new(TestBackend::new(args.width, args.height)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("agentcg: top: {e}");
            return ExitCode::from(crate::EXIT_AGENTCG);
        }
    };
    if let Err(e) = terminal.draw(|f| view::draw(f, &model)) {
        eprintln!("agentcg: top: {e}");
        return ExitCode::from(crate::EXIT_AGENTCG);
    }
    let buffer = terminal.backend().buffer();
    for y in 0..buffer.area.height {
        let line: String = (0..buffer.area.width)
            .map(|x| buffer[(x, y)].symbol())
            .collect();
        println!("{}", line.trim_end());
    }
    ExitCode::SUCCESS
}
