//! `tasks`, `task` and the event timeline (`events`).

use crate::{client, output, print_json, Cli};
use anyhow::Result;
use bosun_types::api::*;
use std::time::Duration;

pub async fn tasks(cli: &Cli, recent: &usize) -> Result<()> {
    let mut path = format!("/v1/tasks?limit={recent}");
    if let Some(d) = &cli.deployment {
        path.push_str(&format!("&deployment={d}"));
    }
    let v: Vec<TaskView> = client(cli)?.get(&path).await?;
    if cli.json {
        return print_json(&v);
    }
    let rows = v
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.state.to_string(),
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t.started_at))
                    .to_string(),
                t.deployment.clone().unwrap_or_else(|| "-".into()),
                t.description.clone(),
                t.result.clone().unwrap_or_default().lines().next().unwrap_or("").to_string(),
            ]
        })
        .collect::<Vec<_>>();
    print!("{}", output::table(&["ID", "State", "Started", "Deployment", "Description", "Result"], &rows));
    Ok(())
}

pub async fn task(cli: &Cli, id: &u64) -> Result<()> {
    let c = client(cli)?;
    if cli.json {
        let page: TaskEventsPage = c.get(&format!("/v1/tasks/{id}/events")).await?;
        return print_json(&page);
    }
    c.follow_task(*id, false).await.map(|_| ())
}

pub async fn cancel_task(cli: &Cli, id: u64) -> Result<()> {
    let v: TaskView = client(cli)?.post_json(&format!("/v1/tasks/{id}/cancel"), &()).await?;
    if cli.json {
        return print_json(&v);
    }
    println!("Task {id} is {}: it stops once the work in flight finishes its step", v.state);
    Ok(())
}

pub async fn locks(cli: &Cli) -> Result<()> {
    let v: Vec<LockView> = client(cli)?.get("/v1/locks").await?;
    if cli.json {
        return print_json(&v);
    }
    let rows: Vec<Vec<String>> =
        v.iter().map(|l| vec![l.kind.clone(), l.resource.clone(), l.task_id.to_string()]).collect();
    print!("{}", output::table(&["Type", "Resource", "Task ID"], &rows));
    Ok(())
}

pub async fn events(
    cli: &Cli,
    instance: &Option<String>,
    task: &Option<u64>,
    since: &Option<u64>,
    before: &Option<u64>,
    limit: &usize,
) -> Result<()> {
    let mut q = vec![format!("limit={limit}")];
    if let Some(d) = &cli.deployment {
        q.push(format!("deployment={d}"));
    }
    if let Some(i) = instance {
        q.push(format!("instance={i}"));
    }
    if let Some(t) = task {
        q.push(format!("task={t}"));
    }
    if let Some(s) = since {
        q.push(format!("since_ms={s}"));
    }
    if let Some(b) = before {
        q.push(format!("before_ms={b}"));
    }
    let v: Vec<EventView> = client(cli)?.get(&format!("/v1/events?{}", q.join("&"))).await?;
    if cli.json {
        return print_json(&v);
    }
    print!("{}", output::events_table(&v));
    Ok(())
}

/// `--since 1h`, `--since 90s` or `--since 2026-11-21T10:00:00Z`, as Unix milliseconds.
pub fn parse_time_ms(s: &str) -> Result<u64, String> {
    let now = std::time::SystemTime::now();
    let t = match humantime::parse_duration(s) {
        Ok(ago) => now.checked_sub(ago).ok_or("too long ago")?,
        Err(_) => humantime::parse_rfc3339_weak(s)
            .map_err(|_| format!("`{s}` is neither a duration (`90s`, `1h`) nor an RFC 3339 time"))?,
    };
    Ok(t.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis() as u64)
}
