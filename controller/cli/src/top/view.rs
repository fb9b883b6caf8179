//! Draws the [`Model`]: a header line, the sessions with their memory against budget as
//! bars, their running calls, the latest events. Fits 80x24; wider screens get wider
//! command and event columns.

use agentcg_core::events::describe::shorten;
use agentcg_core::units::HumanSize;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table};

use super::model::{Model, bar, command_line};

/// Cells of a memory bar.
const BAR: usize = 10;

pub fn draw(f: &mut Frame<'_>, m: &Model) {
    let sessions_h = (m.sessions.len() as u16 + 3).clamp(4, 8);
    let calls_h = (m.running.len() as u16 + 3).clamp(4, 10);
    let [head, sessions, calls, events, foot] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(sessions_h),
        Constraint::Length(calls_h),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    f.render_widget(Paragraph::new(m.header.as_str()).style(bold), head);
    f.render_widget(session_table(m), sessions);
    f.render_widget(call_table(m, calls.width), calls);
    let shown = events.height.saturating_sub(2) as usize;
    let lines: Vec<Line<'_>> = m
        .events
        .iter()
        .skip(m.events.len().saturating_sub(shown))
        .map(|l| Line::raw(l.as_str()))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::TOP).title("events")),
        events,
    );
    let footer = match &m.error {
        Some(e) => format!("q: quit  |  {e}"),
        None => "q: quit".into(),
    };
    let style = if m.error.is_some() {
        Style::default().fg(Color::Red)
    } else {
        Style::default().add_modifier(Modifier::DIM)
    };
    f.render_widget(Paragraph::new(footer).style(style), foot);
}

fn session_table(m: &Model) -> Table<'_> {
    let rows = m.sessions.iter().map(|s| {
        Row::new(vec![
            shorten(&s.name, 14),
            s.priority.clone(),
            format!(
                "{} {}/{}",
                bar(s.memory, s.budget, BAR),
                HumanSize(s.memory),
                HumanSize(s.budget)
            ),
            s.cpu_pct.map_or("-".into(), |c| format!("{c:.0}%")),
            s.pressure.map_or("-".into(), |p| format!("{p:.1}")),
            s.calls.to_string(),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(14),
            Constraint::Length(6),
            Constraint::Length(33),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(5),
        ],
    )
    .header(
        Row::new(["SESSION", "PRIO", "MEMORY / BUDGET", "CPU", "PSI", "CALLS"])
            .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(Block::default().borders(Borders::TOP).title("sessions"))
}

fn call_table(m: &Model, width: u16) -> Table<'_> {
    // The fixed columns take 58 cells and the gaps 7; the command gets the rest.
    let command_w = (width as usize).saturating_sub(65).max(8);
    let rows = m.running.iter().map(|c| {
        let mem = c.memory_current.unwrap_or(0);
        Row::new(vec![
            c.call_id.to_string(),
            shorten(&c.session, 8),
            c.state.clone(),
            format!("{} {}", bar(mem, c.memory_max, 6), HumanSize(mem)),
            c.memory_peak
                .map_or("-".into(), |p| HumanSize(p).to_string()),
            c.cpu_usec
                .map_or("-".into(), |u| format!("{:.1}s", u as f64 / 1e6)),
            format!("{}s", c.age_ms / 1000),
            shorten(&command_line(&c.command), command_w),
        ])
    });
    Table::new(
        rows,
        [
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(16),
            Constraint::Length(9),
            Constraint::Length(6),
            Constraint::Length(5),
            Constraint::Min(8),
        ],
    )
    .header(
        Row::new([
            "ID", "SESSION", "STATE", "MEMORY", "PEAK", "CPU", "AGE", "COMMAND",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD)),
    )
    .block(
        Block::default()
            .borders(Borders::TOP)
            .title("running calls"),
    )
}
