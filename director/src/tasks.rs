//! Tasks: every mutating API call becomes a task with an id, a state and an append-only event
//! stream the CLI follows. One lock per deployment: an operator's task on a locked deployment
//! waits for the lock as BOSH's director does (10 s), then fails naming the task that holds it;
//! the resurrector does not wait (it tries again on its next pass).
//!
//! A task's work runs under a supervisor ([`Task::run`]): whatever happens to it — success, an
//! error, a panic — the task ends with that outcome and its lock is released.
//!
//! A running task may be cancelled (BOSH's `cancel-task`): the request is a flag the work looks at
//! at its checkpoints ([`Task::checkpoint`]: before each batch of instances, each package
//! compilation, each errand); work in flight finishes its current step, so nothing is left half
//! done, and the task ends `cancelled` with its lock released.

use crate::clock::Clock;
use crate::events::{EventSubject, Events};
use crate::store::{tables, State, StoreError, Tree};
use bosun_types::api::{EventLevel, TaskEvent, TaskEventsPage, TaskState, TaskView};
use futures::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tracing::Instrument;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("deployment `{deployment}` is locked by task {task} (waited {waited_secs} s for it)")]
    Locked { deployment: String, task: u64, waited_secs: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("there is no task {0}")]
    NotFound(u64),
    #[error("task {id} is already {state}")]
    Finished { id: u64, state: TaskState },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a task's work returns when it stopped at a checkpoint because it was cancelled.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("cancelled by an operator: the work in flight finished its step; what was not begun is left as it was")]
pub struct Cancelled;

/// A running task's cancellation: asked for, and honoured at a checkpoint.
#[derive(Default)]
struct Cancellation {
    requested: AtomicBool,
    honoured: AtomicBool,
}

#[derive(Clone)]
pub struct Tasks {
    state: State,
    changed: Arc<Notify>,
    events: Events,
    clock: Arc<dyn Clock>,
    /// The tasks running in this director, by id.
    running: Arc<Mutex<HashMap<u64, Arc<Cancellation>>>>,
    /// Held while a task's stored state is read and written back (a cancel and the task's end
    /// must not interleave: a finished task would read `cancelling` for ever).
    state_writes: Arc<tokio::sync::Mutex<()>>,
}

/// How a task takes its deployment's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    /// It takes no lock (uploads, orphan disks).
    None,
    /// The lock now, or the task is refused at once.
    Now,
    /// The lock within this long (a running task's end frees it), or the task is refused.
    Within(Duration),
}

/// How long an operator's task waits for a deployment's lock: BOSH's director waits 10 s (a
/// deploy meeting the resurrection of one VM usually gets the lock in that time).
pub const OPERATOR_LOCK_WAIT: Locking = Locking::Within(Duration::from_secs(10));

fn task_key(id: u64) -> String {
    format!("{id:020}")
}

impl Tasks {
    pub fn new(state: State, events: Events, clock: Arc<dyn Clock>) -> Self {
        Self {
            state,
            changed: Arc::new(Notify::new()),
            events,
            clock,
            running: Arc::default(),
            state_writes: Arc::default(),
        }
    }

    /// Creates a task, taking the deployment's lock as `locking` says.
    pub async fn create(
        &self,
        description: &str,
        deployment: Option<&str>,
        locking: Locking,
    ) -> Result<Task, TaskError> {
        let id = self.state.next_id("task").await?;
        let lock_key = match (locking, deployment) {
            (Locking::Now, Some(d)) => Some(self.lock(d, id, Duration::ZERO).await?),
            (Locking::Within(wait), Some(d)) => Some(self.lock(d, id, wait).await?),
            _ => None,
        };
        let view = TaskView {
            id,
            state: TaskState::Processing,
            description: description.to_string(),
            deployment: deployment.map(str::to_string),
            started_at: self.clock.unix_secs(),
            ended_at: None,
            result: None,
            exit_code: None,
        };
        self.state.put(tables::TASKS, &task_key(id), &view).await?;
        let cancellation = Arc::new(Cancellation::default());
        self.running.lock().expect("the running-task table").insert(id, cancellation.clone());
        let task = Task { id, tasks: self.clone(), lock_key, description: description.to_string(), cancellation };
        self.events.record(task.subject(deployment), "start", &task.cause(), description).await;
        Ok(task)
    }

    /// Takes `deployment`'s lock for task `id`, waiting up to `wait` for the task holding it to
    /// end; the deployment's name is the lock's key.
    async fn lock(&self, deployment: &str, id: u64, wait: Duration) -> Result<String, TaskError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mine = id.to_string();
        loop {
            // Made before the attempt: a task ending between the attempt and the wait is seen.
            let freed = self.changed.notified();
            if self.state.kv().compare_and_swap(Tree::Locks, deployment, None, Some(mine.as_bytes())).await? {
                return Ok(deployment.to_string());
            }
            if tokio::time::Instant::now() >= deadline {
                let holder = self
                    .state
                    .kv()
                    .get(Tree::Locks, deployment)
                    .await?
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                return Err(TaskError::Locked {
                    deployment: deployment.to_string(),
                    task: holder,
                    waited_secs: wait.as_secs(),
                });
            }
            // Looked at again at least every half second, as BOSH's director does: a lock freed
            // by a director restart's recovery is not announced.
            let _ =
                tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + Duration::from_millis(500)), freed)
                    .await;
        }
    }

    /// Asks a running task to stop at its next checkpoint; it shows `cancelling` until it does.
    pub async fn cancel(&self, id: u64, by: &str) -> Result<TaskView, CancelError> {
        let _writing = self.state_writes.lock().await;
        let mut view = self.get(id).await?.ok_or(CancelError::NotFound(id))?;
        let cancellation = self.running.lock().expect("the running-task table").get(&id).cloned();
        let Some(cancellation) = cancellation.filter(|_| !view.state.is_finished()) else {
            return Err(CancelError::Finished { id, state: view.state });
        };
        if !cancellation.requested.swap(true, Ordering::SeqCst) {
            view.state = TaskState::Cancelling;
            self.state.put(tables::TASKS, &task_key(id), &view).await?;
            let subject = EventSubject {
                object_type: "task",
                object_name: id.to_string(),
                deployment: view.deployment.clone(),
                task: Some(id),
                ..Default::default()
            };
            self.events.record(subject, "cancel", by, "cancellation asked for").await;
            self.changed.notify_waiters();
        }
        Ok(view)
    }

    /// The deployments locked now, with the task holding each.
    pub async fn locks(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(self
            .state
            .kv()
            .scan_prefix(Tree::Locks, "")
            .await?
            .into_iter()
            .map(|(deployment, holder)| (deployment, String::from_utf8_lossy(&holder).parse().unwrap_or_default()))
            .collect())
    }

    pub async fn get(&self, id: u64) -> Result<Option<TaskView>, StoreError> {
        self.state.get(tables::TASKS, &task_key(id)).await
    }

    /// Newest first.
    pub async fn list(&self, limit: usize, deployment: Option<&str>) -> Result<Vec<TaskView>, StoreError> {
        let mut all: Vec<TaskView> = self.state.list(tables::TASKS, "").await?;
        all.reverse();
        Ok(all
            .into_iter()
            .filter(|t| deployment.is_none() || t.deployment.as_deref() == deployment)
            .take(limit)
            .collect())
    }

    pub async fn events(&self, id: u64, after: u64) -> Result<Vec<TaskEvent>, StoreError> {
        let events: Vec<TaskEvent> = self.state.list(tables::TASK_EVENTS, &format!("{}/", task_key(id))).await?;
        Ok(events.into_iter().filter(|e| e.seq > after).collect())
    }

    /// Events after `after`, waiting up to `wait` for one to appear or the task to end.
    pub async fn wait_events(&self, id: u64, after: u64, wait: Duration) -> Result<Option<TaskEventsPage>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            let Some(task) = self.get(id).await? else { return Ok(None) };
            let events = self.events(id, after).await?;
            if !events.is_empty() || task.state.is_finished() || tokio::time::Instant::now() >= deadline {
                return Ok(Some(TaskEventsPage { task, events }));
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// After a restart: tasks that were running are marked failed and their locks released.
    pub async fn recover_after_restart(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for mut t in self.state.list(tables::TASKS, "").await? {
            if !t.state.is_finished() {
                t.state = TaskState::Error;
                t.ended_at = Some(self.clock.unix_secs());
                t.result = Some("the director stopped while this task ran".into());
                self.state.put(tables::TASKS, &task_key(t.id), &t).await?;
                let subject = EventSubject {
                    object_type: "task",
                    object_name: t.id.to_string(),
                    deployment: t.deployment.clone(),
                    task: Some(t.id),
                    ..Default::default()
                };
                self.events.record(subject, "end", "director", "interrupted: the director stopped while it ran").await;
                n += 1;
            }
        }
        for (k, _) in self.state.kv().scan_prefix(Tree::Locks, "").await? {
            self.state.kv().delete(Tree::Locks, &k).await?;
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
    cancellation: Arc<Cancellation>,
}

/// What a panic carried, as text.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
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

    /// Runs the task's work on a tokio task of its own, in a `task` span, and finishes the task
    /// with its outcome. A panic in the work fails the task with the panic's message and releases
    /// its lock, as an error would; it never leaves a deployment locked until a restart.
    pub fn run<F>(self, work: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = Result<String, String>> + Send + 'static,
    {
        let span = tracing::info_span!("task", id = self.id, deployment = self.lock_key.as_deref().unwrap_or(""));
        tokio::spawn(
            async move {
                let outcome = match AssertUnwindSafe(work).catch_unwind().await {
                    Ok(outcome) => outcome,
                    Err(panic) => {
                        let message = panic_message(&*panic);
                        tracing::error!(task = self.id, panic = %message, "task panicked");
                        Err(format!("the task panicked: {message}"))
                    }
                };
                self.finish(outcome).await;
            }
            .instrument(span),
        )
    }

    /// Where the work may stop: an error once the task was asked to stop, which the work returns
    /// (the task then ends `cancelled`, not failed).
    pub fn checkpoint(&self) -> Result<(), Cancelled> {
        if self.cancellation.requested.load(Ordering::SeqCst) {
            self.cancellation.honoured.store(true, Ordering::SeqCst);
            return Err(Cancelled);
        }
        Ok(())
    }

    /// Records an event on the timeline, caused by this task.
    pub async fn record(&self, subject: EventSubject, action: &str, message: impl Into<String>) {
        self.tasks.events.record(subject.with_task(self.id), action, &self.cause(), message).await;
    }

    pub async fn event(&self, level: EventLevel, stage: &str, instance: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        match level {
            EventLevel::Info => tracing::info!(task = self.id, stage, instance, "{message}"),
            EventLevel::Warn => tracing::warn!(task = self.id, stage, instance, "{message}"),
            EventLevel::Error => tracing::error!(task = self.id, stage, instance, "{message}"),
        }
        let result = async {
            let seq = self.tasks.state.next_id(&format!("task-events/{}", self.id)).await?;
            let ev = TaskEvent {
                seq,
                time_ms: self.tasks.clock.unix_ms(),
                level,
                stage: stage.to_string(),
                instance: instance.map(str::to_string),
                message,
            };
            self.tasks.state.put(tables::TASK_EVENTS, &format!("{}/{seq:010}", task_key(self.id)), &ev).await
        }
        .await;
        if let Err(e) = result {
            tracing::error!(task = self.id, error = %e, "could not record a task event");
        }
        self.tasks.changed.notify_waiters();
    }

    pub async fn info(&self, stage: &str, instance: Option<&str>, message: impl Into<String>) {
        self.event(EventLevel::Info, stage, instance, message).await;
    }

    pub async fn warn(&self, stage: &str, instance: Option<&str>, message: impl Into<String>) {
        self.event(EventLevel::Warn, stage, instance, message).await;
    }

    /// Records an errand's exit code on the task (before it finishes).
    pub async fn set_exit_code(&self, code: i32) -> Result<(), StoreError> {
        let _writing = self.tasks.state_writes.lock().await;
        if let Some(mut t) = self.tasks.get(self.id).await? {
            t.exit_code = Some(code);
            self.tasks.state.put(tables::TASKS, &task_key(self.id), &t).await?;
        }
        Ok(())
    }

    pub async fn finish(&self, outcome: Result<String, String>) {
        let (state, result) = match outcome {
            Ok(r) => (TaskState::Done, r),
            Err(e) if self.cancellation.honoured.load(Ordering::SeqCst) => {
                self.event(EventLevel::Warn, "cancelled", None, e.clone()).await;
                (TaskState::Cancelled, e)
            }
            Err(e) => {
                self.event(EventLevel::Error, "error", None, e.clone()).await;
                (TaskState::Error, e)
            }
        };
        let deployment = self.tasks.get(self.id).await.ok().flatten().and_then(|t| t.deployment);
        self.tasks
            .events
            .record(
                self.subject(deployment.as_deref()),
                "end",
                &self.cause(),
                format!("{state}: {}", result.lines().next().unwrap_or("")),
            )
            .await;
        let write = async {
            let _writing = self.tasks.state_writes.lock().await;
            if let Some(mut t) = self.tasks.get(self.id).await? {
                t.state = state;
                t.ended_at = Some(self.tasks.clock.unix_secs());
                t.result = Some(result.clone());
                self.tasks.state.put(tables::TASKS, &task_key(self.id), &t).await?;
            }
            if let Some(d) = &self.lock_key {
                let mine = self.id.to_string();
                self.tasks.state.kv().compare_and_swap(Tree::Locks, d, Some(mine.as_bytes()), None).await?;
            }
            Ok::<(), StoreError>(())
        };
        if let Err(e) = write.await {
            tracing::error!(task = self.id, error = %e, "could not record the end of a task");
        }
        let _ = self.tasks.state.flush().await;
        self.tasks.running.lock().expect("the running-task table").remove(&self.id);
        self.tasks.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn tasks() -> Tasks {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        let state = State::in_memory();
        Tasks::new(state.clone(), Events::new(state, clock.clone()), clock)
    }

    #[tokio::test]
    async fn a_second_locking_task_is_refused_naming_the_holder() {
        let t = tasks();
        let first = t.create("deploy", Some("d"), Locking::Now).await.unwrap();
        match t.create("deploy again", Some("d"), Locking::Now).await {
            Err(TaskError::Locked { deployment, task, waited_secs: 0 }) => {
                assert_eq!((deployment.as_str(), task), ("d", first.id))
            }
            other => panic!("expected Locked, got {:?}", other.map(|t| t.id)),
        }
        assert!(t.create("other", Some("e"), Locking::Now).await.is_ok(), "locks are per deployment");
        first.finish(Ok("done".into())).await;
        assert!(t.create("deploy again", Some("d"), Locking::Now).await.is_ok(), "the lock went with the task");
    }

    #[tokio::test]
    async fn an_operators_task_waits_for_the_lock_and_is_refused_only_after_the_wait() {
        let t = tasks();
        let first = t.create("resurrect", Some("d"), Locking::Now).await.unwrap();
        let waiting = tokio::spawn({
            let t = t.clone();
            async move { t.create("delete deployment", Some("d"), OPERATOR_LOCK_WAIT).await.map(|t| t.id) }
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiting.is_finished(), "it waits while the lock is held");
        let started = std::time::Instant::now();
        first.finish(Ok("done".into())).await;
        let second = waiting.await.unwrap().expect("the lock, once the holder ended");
        assert!(started.elapsed() < Duration::from_millis(400), "taken when the holder ends, not at a later poll");
        assert_eq!(t.locks().await.unwrap(), vec![("d".to_string(), second)]);

        let started = std::time::Instant::now();
        match t.create("deploy", Some("d"), Locking::Within(Duration::from_secs(1))).await {
            Err(e @ TaskError::Locked { task, waited_secs: 1, .. }) => {
                assert_eq!(task, second);
                assert_eq!(e.to_string(), format!("deployment `d` is locked by task {second} (waited 1 s for it)"));
            }
            other => panic!("expected Locked after 1 s, got {:?}", other.map(|t| t.id)),
        }
        assert!(started.elapsed() >= Duration::from_secs(1), "refused only after the wait");
    }

    #[tokio::test]
    async fn a_panicking_task_fails_with_the_panic_message_and_frees_its_lock() {
        let t = tasks();
        let task = t.create("deploy", Some("d"), Locking::Now).await.unwrap();
        let id = task.id;
        let handle = task.run(async {
            if std::env::var_os("BOSUN_NEVER_SET_THIS").is_none() {
                panic!("injected: the planner met something impossible");
            }
            Ok("unreachable".to_string())
        });
        handle.await.expect("the supervisor itself does not panic");
        let view = t.get(id).await.unwrap().unwrap();
        assert_eq!(view.state, TaskState::Error);
        assert_eq!(view.result.as_deref(), Some("the task panicked: injected: the planner met something impossible"));
        assert!(t.create("next deploy", Some("d"), Locking::Now).await.is_ok(), "the next deploy gets the lock");
    }

    #[tokio::test]
    async fn a_cancelled_task_stops_at_its_checkpoint_ends_cancelled_and_frees_its_lock() {
        let t = tasks();
        let task = t.create("deploy", Some("d"), Locking::Now).await.unwrap();
        let id = task.id;
        assert!(task.checkpoint().is_ok(), "nobody asked yet");
        assert_eq!(t.locks().await.unwrap(), vec![("d".to_string(), id)]);
        assert_eq!(t.cancel(id, "operator").await.unwrap().state, TaskState::Cancelling);
        assert_eq!(t.get(id).await.unwrap().unwrap().state, TaskState::Cancelling);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = task.clone().run(async move {
            let _ = rx.await;
            task.checkpoint().map_err(|e| e.to_string())?;
            Ok("not reached".into())
        });
        tx.send(()).unwrap();
        handle.await.unwrap();
        let view = t.get(id).await.unwrap().unwrap();
        assert_eq!(view.state, TaskState::Cancelled);
        assert!(t.locks().await.unwrap().is_empty());
        match t.cancel(id, "operator").await {
            Err(CancelError::Finished { state: TaskState::Cancelled, .. }) => {}
            other => panic!("a finished task cannot be cancelled: {:?}", other.map(|v| v.state)),
        }
        assert!(matches!(t.cancel(9999, "operator").await, Err(CancelError::NotFound(9999))));
    }

    #[tokio::test]
    async fn an_error_after_a_cancel_request_that_no_checkpoint_saw_is_an_error() {
        let t = tasks();
        let task = t.create("deploy", Some("d"), Locking::Now).await.unwrap();
        t.cancel(task.id, "operator").await.unwrap();
        task.finish(Err("the VM did not start".into())).await;
        assert_eq!(t.get(task.id).await.unwrap().unwrap().state, TaskState::Error);
    }

    #[tokio::test]
    async fn times_come_from_the_clock() {
        let clock = Arc::new(ManualClock::default());
        let state = State::in_memory();
        let t = Tasks::new(state.clone(), Events::new(state, clock.clone()), clock.clone());
        let task = t.create("deploy", None, Locking::None).await.unwrap();
        clock.advance(Duration::from_secs(90));
        task.finish(Ok("done".into())).await;
        let v = t.get(task.id).await.unwrap().unwrap();
        assert_eq!(v.ended_at.unwrap() - v.started_at, 90);
    }
}
