//! Tasks: every mutating API call becomes a task with an id, a state and an append-only event
//! stream the CLI follows. One lock per deployment: a second mutating task on a locked deployment
//! fails at once, naming the task that holds the lock.

use crate::events::{EventSubject, Events};
use crate::records::{now_ms, now_secs};
use crate::store::{State, StoreError, Tree};
use bosun_types::api::{EventLevel, TaskEvent, TaskEventsPage, TaskState, TaskView};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("deployment `{deployment}` is locked by task {task}")]
    Locked { deployment: String, task: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone)]
pub struct Tasks {
    state: State,
    changed: Arc<Notify>,
    events: Events,
}

fn task_key(id: u64) -> String {
    format!("{id:020}")
}

impl Tasks {
    pub fn new(state: State, events: Events) -> Self {
        Self { state, changed: Arc::new(Notify::new()), events }
    }

    /// Creates a task, taking the deployment's lock when `lock` is set.
    pub fn create(&self, description: &str, deployment: Option<&str>, lock: bool) -> Result<Task, TaskError> {
        let id = self.state.next_id("task")?;
        let lock_key = match (lock, deployment) {
            (true, Some(d)) => {
                if !self.state.kv().compare_and_swap(Tree::Locks, d, None, Some(id.to_string().as_bytes()))? {
                    let holder = self
                        .state
                        .kv()
                        .get(Tree::Locks, d)?
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    return Err(TaskError::Locked { deployment: d.to_string(), task: holder });
                }
                Some(d.to_string())
            }
            _ => None,
        };
        let view = TaskView {
            id,
            state: TaskState::Processing,
            description: description.to_string(),
            deployment: deployment.map(str::to_string),
            started_at: now_secs(),
            ended_at: None,
            result: None,
        };
        self.state.put(Tree::Tasks, &task_key(id), &view)?;
        let task = Task { id, tasks: self.clone(), lock_key, description: description.to_string() };
        self.events.record(task.subject(deployment), "start", &task.cause(), description);
        Ok(task)
    }

    pub fn get(&self, id: u64) -> Result<Option<TaskView>, StoreError> {
        self.state.get(Tree::Tasks, &task_key(id))
    }

    /// Newest first.
    pub fn list(&self, limit: usize, deployment: Option<&str>) -> Result<Vec<TaskView>, StoreError> {
        let mut all: Vec<TaskView> = self.state.list(Tree::Tasks, "")?;
        all.reverse();
        Ok(all
            .into_iter()
            .filter(|t| deployment.is_none() || t.deployment.as_deref() == deployment)
            .take(limit)
            .collect())
    }

    pub fn events(&self, id: u64, after: u64) -> Result<Vec<TaskEvent>, StoreError> {
        let events: Vec<TaskEvent> = self.state.list(Tree::TaskEvents, &format!("{}/", task_key(id)))?;
        Ok(events.into_iter().filter(|e| e.seq > after).collect())
    }

    /// Events after `after`, waiting up to `wait` for one to appear or the task to end.
    pub async fn wait_events(&self, id: u64, after: u64, wait: Duration) -> Result<Option<TaskEventsPage>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let Some(task) = self.get(id)? else { return Ok(None) };
            let events = self.events(id, after)?;
            if !events.is_empty() || task.state.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(Some(TaskEventsPage { task, events }));
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// After a restart: tasks that were running are marked failed and their locks released.
    pub fn recover_after_restart(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for mut t in self.state.list::<TaskView>(Tree::Tasks, "")? {
            if !t.state.is_finished() {
                t.state = TaskState::Error;
                t.ended_at = Some(now_secs());
                t.result = Some("the director stopped while this task ran".into());
                self.state.put(Tree::Tasks, &task_key(t.id), &t)?;
                let subject = EventSubject {
                    object_type: "task",
                    object_name: t.id.to_string(),
                    deployment: t.deployment.clone(),
                    task: Some(t.id),
                    ..Default::default()
                };
                self.events.record(subject, "end", "director", "interrupted: the director stopped while it ran");
                n += 1;
            }
        }
        for (k, _) in self.state.kv().scan_prefix(Tree::Locks, "")? {
            self.state.delete(Tree::Locks, &k)?;
        }
        Ok(n)
    }
}

/// A running task: append events, then finish it exactly once.
#[derive(Clone)]
pub struct Task {
    pub id: u64,
    tasks: Tasks,
    lock_key: Option<String>,
    description: String,
}

impl Task {
    /// How events name this task as their cause.
    pub fn cause(&self) -> String {
        format!("task {} ({})", self.id, self.description)
    }

    fn subject(&self, deployment: Option<&str>) -> EventSubject {
        EventSubject {
            object_type: "task",
            object_name: self.id.to_string(),
            deployment: deployment.map(str::to_string),
            task: Some(self.id),
            ..Default::default()
        }
    }

    /// Records an event on the timeline, caused by this task.
    pub fn record(&self, subject: EventSubject, action: &str, message: impl Into<String>) {
        self.tasks.events.record(subject.with_task(self.id), action, &self.cause(), message);
    }

    pub fn event(&self, level: EventLevel, stage: &str, instance: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        match level {
            EventLevel::Info => tracing::info!(task = self.id, stage, instance, "{message}"),
            EventLevel::Warn => tracing::warn!(task = self.id, stage, instance, "{message}"),
            EventLevel::Error => tracing::error!(task = self.id, stage, instance, "{message}"),
        }
        let result = (|| -> Result<(), StoreError> {
            let seq = self.tasks.state.next_id(&format!("task-events/{}", self.id))?;
            let ev = TaskEvent {
                seq,
                time_ms: now_ms(),
                level,
                stage: stage.to_string(),
                instance: instance.map(str::to_string),
                message,
            };
            self.tasks.state.put(Tree::TaskEvents, &format!("{}/{seq:010}", task_key(self.id)), &ev)
        })();
        if let Err(e) = result {
            tracing::error!(task = self.id, error = %e, "could not record a task event");
        }
        self.tasks.changed.notify_waiters();
    }

    pub fn info(&self, stage: &str, instance: Option<&str>, message: impl Into<String>) {
        self.event(EventLevel::Info, stage, instance, message);
    }

    pub fn warn(&self, stage: &str, instance: Option<&str>, message: impl Into<String>) {
        self.event(EventLevel::Warn, stage, instance, message);
    }

    pub async fn finish(&self, outcome: Result<String, String>) {
        let (state, result) = match outcome {
            Ok(r) => (TaskState::Done, r),
            Err(e) => {
                self.event(EventLevel::Error, "error", None, e.clone());
                (TaskState::Error, e)
            }
        };
        let deployment = self.tasks.get(self.id).ok().flatten().and_then(|t| t.deployment);
        self.tasks.events.record(
            self.subject(deployment.as_deref()),
            "end",
            &self.cause(),
            format!("{state}: {}", result.lines().next().unwrap_or("")),
        );
        let write = || -> Result<(), StoreError> {
            if let Some(mut t) = self.tasks.get(self.id)? {
                t.state = state;
                t.ended_at = Some(now_secs());
                t.result = Some(result.clone());
                self.tasks.state.put(Tree::Tasks, &task_key(self.id), &t)?;
            }
            if let Some(d) = &self.lock_key {
                self.tasks.state.kv().compare_and_swap(Tree::Locks, d, Some(self.id.to_string().as_bytes()), None)?;
            }
            Ok(())
        };
        if let Err(e) = write() {
            tracing::error!(task = self.id, error = %e, "could not record the end of a task");
        }
        let _ = self.tasks.state.flush().await;
        self.tasks.changed.notify_waiters();
    }
}
