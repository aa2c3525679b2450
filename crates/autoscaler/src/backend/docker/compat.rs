//! Podman's Docker-compatible API where it answers what bollard refuses to parse.
//!
//! Podman reports its internal container states through the compatible API: `stopped` (the
//! runtime exited, Podman's clean-up still pending), `stopping`, `configured`,
//! `initialized`. They appear in `State` of `GET /containers/json` (podman issue #28359,
//! fixed upstream in 2026 by PR #28390) and, in Podman 4.x, in `State.Status` of
//! `GET /containers/{id}/json` (podman issue #17728, bollard issue #293). bollard's state
//! enums know only Docker's states, so a single container caught while it stops fails the
//! whole response ("unknown variant `stopped`"): seen with Podman 4.3 in
//! tests/e2e_podman.rs, where the failed listing made the engine look unreachable and held
//! every removal back for its backoff.
//!
//! These wrappers re-read such a response (bollard keeps the body with its
//! `json_data_content` feature) with the states mapped as Podman's own fix maps them:
//! stopped -> exited, stopping -> running, configured and initialized -> created. Any other
//! failure is returned unchanged.

use bollard::{
    errors::Error,
    models::{ContainerInspectResponse, ContainerSummary},
    query_parameters::ListContainersOptions,
    Docker,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `GET /containers/json`, tolerating Podman's internal states.
pub async fn list_containers(
    client: &Docker,
    options: Option<ListContainersOptions>,
) -> Result<Vec<ContainerSummary>, Error> {
    match client.list_containers(options).await {
        Err(error) => recover(error, listing_states),
        listed => listed,
    }
}

/// `GET /containers/{id}/json`, tolerating Podman's internal states.
pub async fn inspect_container(
    client: &Docker,
    container_id: &str,
) -> Result<ContainerInspectResponse, Error> {
    match client.inspect_container(container_id, None).await {
        Err(error) => recover(error, inspection_state),
        inspected => inspected,
    }
}

/// Parses the body of a response bollard could not parse, after `fix`; the original error
/// when that does not help either.
fn recover<T: DeserializeOwned>(error: Error, fix: impl FnOnce(&mut Value)) -> Result<T, Error> {
    let Error::JsonDataError { contents, .. } = &error else {
        return Err(error);
    };
    let Ok(mut value) = serde_json::from_str::<Value>(contents) else {
        return Err(error);
    };
    fix(&mut value);
    serde_json::from_value(value).map_err(|_| error)
}

/// `State` of every container of a listing.
fn listing_states(value: &mut Value) {
    if let Some(list) = value.as_array_mut() {
        for container in list {
            docker_state(container.get_mut("State"));
        }
    }
}

/// `State.Status` of an inspection.
fn inspection_state(value: &mut Value) {
    docker_state(value.get_mut("State").and_then(|s| s.get_mut("Status")));
}

/// Replaces one of Podman's internal state names by Docker's.
fn docker_state(state: Option<&mut Value>) {
    let Some(Value::String(text)) = state else {
        return;
    };
    let docker = match text.as_str() {
        "stopped" => "exited",
        "stopping" => "running",
        "configured" | "initialized" => "created",
        _ => return,
    };
    *text = docker.to_string();
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerStateStatusEnum, ContainerSummaryStateEnum};

    use super::*;

    /// The error bollard returns for a body its types refuse.
    fn refused<T: DeserializeOwned + std::fmt::Debug>(body: &str) -> Error {
        let parse_error = serde_json::from_str::<T>(body).expect_err("bollard refuses it");
        Error::JsonDataError {
            message: parse_error.to_string(),
            contents: body.to_string(),
            column: parse_error.column(),
        }
    }

    #[test]
    fn a_listing_with_podman_states_is_read_with_docker_states() {
        // The shape of Podman 4.3's answer, trimmed to the fields the backend reads.
        let body = r#"[
            {"Id": "a1", "State": "stopped", "Status": "Exited (0) 1 second ago",
             "Labels": {"org.forgejo.autoscaler.owner": "o"}},
            {"Id": "b2", "State": "running", "Status": "Up 3 seconds", "Labels": {}},
            {"Id": "c3", "State": "configured", "Status": "Created", "Labels": {}}
        ]"#;
        let error = refused::<Vec<ContainerSummary>>(body);
        assert!(
            error.to_string().contains("unknown variant `stopped`"),
            "{error}"
        );
        let list: Vec<ContainerSummary> = recover(error, listing_states).expect("recovered");
        let states: Vec<_> = list.iter().map(|c| c.state).collect();
        assert_eq!(
            states,
            [
                Some(ContainerSummaryStateEnum::EXITED),
                Some(ContainerSummaryStateEnum::RUNNING),
                Some(ContainerSummaryStateEnum::CREATED)
            ]
        );
        assert_eq!(
            list[0].labels.as_ref().unwrap()["org.forgejo.autoscaler.owner"],
            "o"
        );
        assert_eq!(list[0].status.as_deref(), Some("Exited (0) 1 second ago"));
    }

    #[test]
    fn an_inspection_with_a_podman_state_keeps_its_exit_code() {
        let body = r#"{"Id": "a1", "State": {"Status": "stopped", "Running": false,
            "ExitCode": 3, "StartedAt": "2026-01-01T00:00:00Z"}}"#;
        let error = refused::<ContainerInspectResponse>(body);
        let inspected: ContainerInspectResponse =
            recover(error, inspection_state).expect("recovered");
        let state = inspected.state.expect("a state");
        assert_eq!(state.status, Some(ContainerStateStatusEnum::EXITED));
        assert_eq!(state.exit_code, Some(3));
    }

    #[test]
    fn other_failures_are_returned_unchanged() {
        let server = Error::DockerResponseServerError {
            status_code: 500,
            message: "boom".into(),
        };
        let back = recover::<Vec<ContainerSummary>>(server, |_| {}).expect_err("not recovered");
        assert!(matches!(
            back,
            Error::DockerResponseServerError {
                status_code: 500,
                ..
            }
        ));
        // A body that is wrong for another reason than a state stays an error.
        let error = refused::<Vec<ContainerSummary>>(r#"[{"Id": 5}]"#);
        let back =
            recover::<Vec<ContainerSummary>>(error, listing_states).expect_err("still invalid");
        assert!(matches!(back, Error::JsonDataError { .. }));
        // An unknown state that is not one of Podman's is not guessed.
        let mut value = serde_json::json!("hibernating");
        docker_state(Some(&mut value));
        assert_eq!(value, "hibernating");
    }
}
