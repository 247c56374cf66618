//! The event timeline: every task start and end, instance state change, health finding,
//! resurrection decision, meltdown and cck resolution, each saying who or what caused it.

use crate::clock::Clock;
use crate::store::{tables, State, StoreError};
use bosun_types::api::EventView;
use std::sync::Arc;

#[derive(Clone)]
pub struct Events {
    state: State,
    clock: Arc<dyn Clock>,
}

/// What an event is about.
#[derive(Debug, Clone, Default)]
pub struct EventSubject {
    pub object_type: &'static str,
    pub object_name: String,
    pub deployment: Option<String>,
    pub instance: Option<String>,
    pub task: Option<u64>,
}

impl EventSubject {
    pub fn instance(deployment: &str, instance: &str) -> Self {
        EventSubject {
            object_type: "instance",
            object_name: instance.to_string(),
            deployment: Some(deployment.to_string()),
            instance: Some(instance.to_string()),
            task: None,
        }
    }
    pub fn deployment(deployment: &str) -> Self {
        EventSubject {
            object_type: "deployment",
            object_name: deployment.to_string(),
            deployment: Some(deployment.to_string()),
            ..Default::default()
        }
    }
    pub fn with_task(mut self, task: u64) -> Self {
        self.task = Some(task);
        self
    }
}

/// Which events to list.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct EventFilter {
    #[serde(default)]
    pub deployment: Option<String>,
    /// `group/uuid`, or a prefix of it (`group`).
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub task: Option<u64>,
    /// Unix milliseconds, inclusive.
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Unix milliseconds, exclusive.
    #[serde(default)]
    pub before_ms: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

fn event_key(id: u64) -> String {
    format!("{id:020}")
}

impl Events {
    pub fn new(state: State, clock: Arc<dyn Clock>) -> Self {
        Self { state, clock }
    }

    /// Records an event. A failure to record is logged, never fatal: the timeline must not stop
    /// the work it describes.
    pub async fn record(&self, subject: EventSubject, action: &str, cause: &str, message: impl Into<String>) {
        self.record_since(subject, action, cause, message, None).await
    }

    /// Records an event about something that began earlier (`since_ms`, Unix milliseconds).
    pub async fn record_since(
        &self,
        subject: EventSubject,
        action: &str,
        cause: &str,
        message: impl Into<String>,
        since_ms: Option<u64>,
    ) {
        let message = message.into();
        let result = async {
            let id = self.state.next_id("event").await?;
            let ev = EventView {
                id,
                time_ms: self.clock.unix_ms(),
                action: action.to_string(),
                object_type: subject.object_type.to_string(),
                object_name: subject.object_name,
                deployment: subject.deployment,
                instance: subject.instance,
                task: subject.task,
                cause: cause.to_string(),
                message,
                since_ms,
            };
            tracing::info!(event = ev.id, action, object = %ev.object_name, cause, "{}", ev.message);
            self.state.put(tables::EVENTS, &event_key(id), &ev).await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "could not record an event");
        }
    }

    /// Newest first, filtered.
    pub async fn list(&self, f: &EventFilter) -> Result<Vec<EventView>, StoreError> {
        let mut all: Vec<EventView> = self.state.list(tables::EVENTS, "").await?;
        all.reverse();
        Ok(all
            .into_iter()
            .filter(|e| f.deployment.as_ref().is_none_or(|d| e.deployment.as_ref() == Some(d)))
            .filter(|e| {
                f.instance.as_ref().is_none_or(|i| e.instance.as_ref().is_some_and(|x| x.starts_with(i.as_str())))
            })
            .filter(|e| f.task.is_none_or(|t| e.task == Some(t)))
            .filter(|e| f.since_ms.is_none_or(|s| e.time_ms >= s))
            .filter(|e| f.before_ms.is_none_or(|b| e.time_ms < b))
            .take(f.limit.unwrap_or(200).min(10_000))
            .collect())
    }
}
