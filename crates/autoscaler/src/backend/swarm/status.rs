//! An instance's status from its service's task, as Swarm reports it. Pure, unit-tested.
//!
//! A replicated job with restart condition none has one task. Its state says everything:
//! waiting for a node or starting counts as running (the boot deadline covers a task that never
//! gets a node); `complete` is an exit with the container's code; `failed` is an exit with the
//! code when the container ran (a task that failed before its container started has none, and
//! must never pass for a success); `rejected`, `shutdown`, `remove` and `orphaned` are ends
//! without a verdict. A task still "running" on a node the managers see down is lost: its
//! runner cannot be reached, so it is reported as exited and its slot freed.

use std::collections::HashSet;

use bollard::models::{Task, TaskState};

use crate::backend::InstanceStatus;

/// The task that speaks for the service: the newest one (by creation time).
pub fn current_task(tasks: &[Task]) -> Option<&Task> {
    tasks.iter().max_by(|a, b| created(a).cmp(&created(b)))
}

fn created(task: &Task) -> String {
    task.created_at
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_default()
}

/// The status of an instance whose service has `task` (`None`: not scheduled yet). `down_nodes`
/// are the ids of nodes the managers see down.
pub fn instance_status(task: Option<&Task>, down_nodes: &HashSet<String>) -> InstanceStatus {
    let Some(task) = task else {
        return InstanceStatus::Running;
    };
    let status = task.status.as_ref();
    let code = status
        .and_then(|s| s.container_status.as_ref())
        .and_then(|c| c.exit_code)
        .and_then(|c| i32::try_from(c).ok());
    match status.and_then(|s| s.state) {
        None
        | Some(TaskState::NEW)
        | Some(TaskState::ALLOCATED)
        | Some(TaskState::PENDING)
        | Some(TaskState::ASSIGNED)
        | Some(TaskState::ACCEPTED)
        | Some(TaskState::PREPARING)
        | Some(TaskState::READY)
        | Some(TaskState::STARTING)
        | Some(TaskState::RUNNING) => {
            if task
                .node_id
                .as_ref()
                .is_some_and(|n| down_nodes.contains(n))
            {
                InstanceStatus::Exited { code: None }
            } else {
                InstanceStatus::Running
            }
        }
        Some(TaskState::COMPLETE) => InstanceStatus::Exited {
            code: Some(code.unwrap_or(0)),
        },
        Some(TaskState::FAILED) => InstanceStatus::Exited {
            code: code.filter(|c| *c != 0),
        },
        Some(TaskState::REJECTED)
        | Some(TaskState::SHUTDOWN)
        | Some(TaskState::REMOVE)
        | Some(TaskState::ORPHANED) => InstanceStatus::Exited { code: None },
    }
}

/// What Swarm said about a task that did not end well, for the removal's record (the runner's
/// own output says nothing when its container never started): e.g. `task rejected: No such
/// image: ...`, or `node ... is down`.
pub fn task_note(task: Option<&Task>, down_nodes: &HashSet<String>) -> Option<String> {
    let task = task?;
    let status = task.status.as_ref()?;
    let state = status.state?;
    let node_down = task.node_id.as_ref().filter(|n| down_nodes.contains(*n));
    match state {
        TaskState::COMPLETE => None,
        _ if state < TaskState::COMPLETE => {
            node_down.map(|node| format!("swarm: node {node} of the task is down"))
        }
        _ => {
            let detail = status
                .err
                .as_deref()
                .or(status.message.as_deref())
                .unwrap_or("")
                .trim();
            Some(
                format!("swarm: task {state}: {detail}")
                    .trim_end_matches(": ")
                    .to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerStatus, TaskStatus};

    use super::*;

    fn task(state: TaskState, code: Option<i64>, err: Option<&str>, node: &str, at: &str) -> Task {
        Task {
            node_id: Some(node.into()),
            created_at: Some(at.to_string()),
            status: Some(TaskStatus {
                state: Some(state),
                err: err.map(str::to_string),
                container_status: code.map(|c| ContainerStatus {
                    exit_code: Some(c),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn states_map_to_running_or_exited() {
        let none = HashSet::new();
        let status = |t: Task| instance_status(Some(&t), &none);
        assert_eq!(instance_status(None, &none), InstanceStatus::Running);
        assert_eq!(
            status(task(TaskState::PENDING, None, None, "n1", "1")),
            InstanceStatus::Running
        );
        assert_eq!(
            status(task(TaskState::RUNNING, None, None, "n1", "1")),
            InstanceStatus::Running
        );
        assert_eq!(
            status(task(TaskState::COMPLETE, Some(0), None, "n1", "1")),
            InstanceStatus::Exited { code: Some(0) }
        );
        assert_eq!(
            status(task(
                TaskState::FAILED,
                Some(3),
                Some("task: non-zero exit (3)"),
                "n1",
                "1"
            )),
            InstanceStatus::Exited { code: Some(3) }
        );
        // Failed before its container ran: no code, never a success.
        assert_eq!(
            status(task(
                TaskState::FAILED,
                Some(0),
                Some("starting container failed"),
                "n1",
                "1"
            )),
            InstanceStatus::Exited { code: None }
        );
        assert_eq!(
            status(task(
                TaskState::REJECTED,
                None,
                Some("No such image"),
                "n1",
                "1"
            )),
            InstanceStatus::Exited { code: None }
        );
        assert_eq!(
            status(task(TaskState::ORPHANED, None, None, "n1", "1")),
            InstanceStatus::Exited { code: None }
        );
    }

    #[test]
    fn a_task_on_a_down_node_is_lost() {
        let down = HashSet::from(["n2".to_string()]);
        let running = task(TaskState::RUNNING, None, None, "n2", "1");
        assert_eq!(
            instance_status(Some(&running), &down),
            InstanceStatus::Exited { code: None }
        );
        assert_eq!(
            task_note(Some(&running), &down).as_deref(),
            Some("swarm: node n2 of the task is down")
        );
        let elsewhere = task(TaskState::RUNNING, None, None, "n1", "1");
        assert_eq!(
            instance_status(Some(&elsewhere), &down),
            InstanceStatus::Running
        );
        assert_eq!(task_note(Some(&elsewhere), &down), None);
    }

    #[test]
    fn notes_and_the_newest_task() {
        let none = HashSet::new();
        let rejected = task(
            TaskState::REJECTED,
            None,
            Some("No such image: x:1"),
            "n1",
            "2026-01-01T00:00:02Z",
        );
        assert_eq!(
            task_note(Some(&rejected), &none).as_deref(),
            Some("swarm: task rejected: No such image: x:1")
        );
        let done = task(
            TaskState::COMPLETE,
            Some(0),
            None,
            "n1",
            "2026-01-01T00:00:01Z",
        );
        assert_eq!(task_note(Some(&done), &none), None);
        let tasks = [done.clone(), rejected.clone()];
        assert_eq!(current_task(&tasks), Some(&rejected));
        assert_eq!(current_task(&[]), None);
    }
}
