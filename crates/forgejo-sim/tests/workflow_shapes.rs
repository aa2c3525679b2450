//! Every workflow shape in `shared/workflow-shapes/` (our files reproducing real public Forgejo
//! workflows) parsed into exactly the jobs its shape implies. The expected jobs were worked out by
//! hand from each file and from Forgejo's rules (see the `workflow` module documentation): names
//! `key (v1, v2)` with values in dimension-name order, combinations sorted by that string.

use std::collections::HashMap;
use std::path::PathBuf;

use forgejo_sim::workflow::{
    expand_incomplete_job, parse_workflow, parse_workflow_with, JobKind, JobSpec, ParseOptions,
    Workflow,
};
use serde_norway::Value;

/// `shared/workflow-shapes`, beside the repository checkout.
fn shapes_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/workflow-shapes");
    assert!(
        dir.is_dir(),
        "the workflow shapes folder {} is missing: these tests need the team's `shared` folder next to the repository",
        dir.display()
    );
    dir
}

fn read_shape(file: &str) -> String {
    let path = shapes_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Resolves `uses: ./.forgejo/workflows/<file>` to the shape file of the same name.
fn resolve_in_shapes(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    std::fs::read_to_string(shapes_dir().join(file)).ok()
}

fn parse_shape(file: &str) -> Workflow {
    let content = read_shape(file);
    parse_workflow(
        &format!(".forgejo/workflows/{file}"),
        &content,
        &resolve_in_shapes,
    )
    .unwrap_or_else(|e| panic!("{file} must be accepted, got: {e}"))
}

/// (key, name, runs_on, needs)
type Expected<'a> = (&'a str, &'a str, &'a [&'a str], &'a [&'a str]);

fn summary(job: &JobSpec) -> (String, String, Vec<String>, Vec<String>) {
    (
        job.key.clone(),
        job.name.clone(),
        job.runs_on.clone(),
        job.needs.clone(),
    )
}

fn assert_jobs(workflow: &Workflow, expected: &[Expected<'_>]) {
    let got: Vec<_> = workflow.jobs.iter().map(summary).collect();
    let want: Vec<_> = expected
        .iter()
        .map(|(k, n, r, d)| {
            (
                k.to_string(),
                n.to_string(),
                r.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                d.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "job count differs; got {got:#?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "job #{i} differs");
    }
    for job in &workflow.jobs {
        assert_payload_is_single_job(job);
    }
}

/// The payload is YAML with exactly this job, no `needs`, its evaluated labels and the same
/// `run:` commands as the job's steps: what a runner stand-in reads.
fn assert_payload_is_single_job(job: &JobSpec) {
    let doc: Value = serde_norway::from_str(&job.payload)
        .unwrap_or_else(|e| panic!("payload of {} is not YAML: {e}\n{}", job.name, job.payload));
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_mapping)
        .expect("payload has jobs");
    assert_eq!(jobs.len(), 1, "payload of {} must hold one job", job.name);
    let body = jobs
        .get(job.key.as_str())
        .unwrap_or_else(|| panic!("payload lacks job {}", job.key));
    assert!(
        body.get("needs").is_none(),
        "needs are erased from payloads"
    );
    assert_eq!(
        body.get("name").and_then(Value::as_str),
        Some(job.name.as_str())
    );
    let labels: Vec<String> = match body.get("runs-on") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        other => panic!("unexpected runs-on in payload: {other:?}"),
    };
    assert_eq!(labels, job.runs_on);
    let runs: Vec<Option<String>> = body
        .get("steps")
        .and_then(Value::as_sequence)
        .map(|steps| {
            steps
                .iter()
                .map(|s| s.get("run").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let expected: Vec<Option<String>> = job.steps.iter().map(|s| s.run.clone()).collect();
    assert_eq!(runs, expected, "payload steps of {}", job.name);
}

fn runs_of(job: &JobSpec) -> Vec<&str> {
    job.steps.iter().filter_map(|s| s.run.as_deref()).collect()
}

#[test]
fn bartoostveen_check() {
    let wf = parse_shape("bartoostveen-check.yml");
    assert_eq!(wf.name, "bartoostveen-check.yml");
    assert!(wf.on.push && !wf.on.workflow_dispatch && wf.on.schedules.is_empty());
    assert_jobs(
        &wf,
        &[(
            "check",
            "check",
            &["native-x86_64-linux", "bigger-parallel"],
            &[],
        )],
    );
    assert_eq!(
        runs_of(&wf.jobs[0]),
        vec!["echo \"evaluate all machine configurations\"", "sleep 8"]
    );
}

#[test]
fn bzd_pr_gate() {
    let wf = parse_shape("bzd-pr-gate.yml");
    assert!(wf.on.workflow_dispatch && !wf.on.push);
    assert_jobs(
        &wf,
        &[
            ("lease_linux", "lease_linux", &["node_manager_client"], &[]),
            ("build_linux", "build_linux", &["linux"], &["lease_linux"]),
        ],
    );
    assert_eq!(wf.jobs[1].steps.len(), 6);
}

#[test]
fn emaintenance_deploy() {
    let wf = parse_shape("emaintenance-deploy.yml");
    assert_eq!(wf.name, "synthetic-deploy-pipeline");
    assert!(wf.on.push && wf.on.workflow_dispatch);
    let u: &[&str] = &["ubuntu-latest"];
    assert_jobs(
        &wf,
        &[
            ("pre-deploy", "pre-deploy", u, &[]),
            (
                "test-before-deploy",
                "test-before-deploy",
                u,
                &["pre-deploy"],
            ),
            (
                "backup-production",
                "backup-production",
                u,
                &["pre-deploy", "test-before-deploy"],
            ),
            ("deploy", "deploy", u, &["pre-deploy", "backup-production"]),
            ("health-check", "health-check", u, &["deploy"]),
            ("rollback", "rollback", u, &["deploy", "health-check"]),
            ("notify", "notify", u, &["deploy", "health-check"]),
        ],
    );
    let pre = &wf.jobs[0];
    assert_eq!(
        pre.outputs.keys().collect::<Vec<_>>(),
        vec!["deploy_env", "version"]
    );
    assert_eq!(pre.outputs["version"], "${{ steps.v.outputs.version }}");
    assert_eq!(
        wf.jobs[1].if_condition.as_deref(),
        Some("${{ !github.event.inputs.skip_tests }}")
    );
    assert_eq!(
        wf.jobs[5].if_condition.as_deref(),
        Some("failure() && needs.deploy.result == 'success'")
    );
    assert_eq!(wf.jobs[6].if_condition.as_deref(), Some("always()"));
}

#[test]
fn ffmpeg_fate() {
    let wf = parse_shape("ffmpeg-fate.yml");
    assert!(wf.on.push);
    let image = "ghcr.io/btbn/ffmpeg-builds/win64-gpl-4.3:latest";
    let compile_name = format!("compile_only ({image})");
    assert_jobs(
        &wf,
        &[
            // matrix keys bits < runner < shared; the two includes add combinations.
            (
                "run_fate",
                "run_fate (32, linux-amd64, static)",
                &["linux-amd64"],
                &[],
            ),
            (
                "run_fate",
                "run_fate (64, linux-aarch64, static)",
                &["linux-aarch64"],
                &[],
            ),
            (
                "run_fate",
                "run_fate (64, linux-amd64, shared)",
                &["linux-amd64"],
                &[],
            ),
            ("compile_only", &compile_name, &["linux-amd64"], &[]),
        ],
    );
    // The container image stays an expression: the runner evaluates it with the matrix.
    assert_eq!(
        wf.jobs[3].container.as_ref().map(|c| c.image.as_str()),
        Some("${{ matrix.image }}")
    );
    assert!(wf.jobs[0].payload.contains("linux-amd64") && wf.jobs[0].payload.contains("'32'"));
}

#[test]
fn flask_socketio_tests() {
    let wf = parse_shape("flask-socketio-tests.yml");
    assert_eq!(wf.name, "synthetic-matrix-tests");
    // Explicit `name:` is interpolated and nothing is appended; order follows the sorted
    // `(flask, os, python)` display strings, so flask '' comes first.
    let flasks = ["", "<2.2", "<3.0", "<3.1", "<3.2"];
    let pythons = ["3.10", "3.11", "3.12", "3.13", "3.14", "pypy-3.11"];
    let mut names = Vec::new();
    for flask in flasks {
        for python in pythons {
            if !(flask == "<2.2" && python == "3.14") {
                names.push(format!("tests-{python} {flask}"));
            }
        }
    }
    assert_eq!(names.len(), 29);
    let mut expected: Vec<Expected<'_>> = vec![("lint", "lint", &["ubuntu-latest"], &[])];
    expected.extend(
        names
            .iter()
            .map(|n| ("tests", n.as_str(), &["ubuntu-latest"][..], &[][..])),
    );
    assert_jobs(&wf, &expected);
    // Step text is the runner's to evaluate; the server leaves it alone.
    assert_eq!(
        runs_of(&wf.jobs[1]),
        vec![
            "echo \"python ${{ matrix.python }} flask '${{ matrix.flask }}'\"",
            "sleep 2"
        ]
    );
    // ...but the payload carries this job's combination for it.
    let payload: Value = serde_norway::from_str(&wf.jobs[1].payload).expect("payload is YAML");
    let matrix = &payload["jobs"]["tests"]["strategy"]["matrix"];
    let expected: Value =
        serde_norway::from_str("{flask: [''], os: [ubuntu-latest], python: ['3.10']}")
            .expect("yaml");
    assert_eq!(matrix, &expected);
}

#[test]
fn forgejo_runner_test() {
    let wf = parse_shape("forgejo-runner-test.yml");
    assert_eq!(wf.name, "synthetic-runner-test");
    assert_jobs(
        &wf,
        &[
            ("build-and-tests", "build-and-tests", &["docker"], &[]),
            (
                "runner-exec-tests",
                "runner-exec-tests",
                &["lxc-bookworm"],
                &["build-and-tests"],
            ),
            (
                "integration-tests",
                "integration-tests (latest)",
                &["lxc-bookworm"],
                &[],
            ),
            (
                "integration-tests",
                "integration-tests (stable)",
                &["lxc-bookworm"],
                &[],
            ),
            (
                "runner-integration-tests",
                "runner-integration-tests",
                &["lxc-bookworm"],
                &["build-and-tests"],
            ),
            ("validate-mocks", "validate-mocks", &["docker"], &[]),
            (
                "validate-pre-commit",
                "validate-pre-commit",
                &["docker"],
                &[],
            ),
        ],
    );
    let build = &wf.jobs[0];
    assert_eq!(
        build.if_condition.as_deref(),
        Some("vars.ROLE == 'forgejo-coding'")
    );
    assert_eq!(
        build.container.as_ref().map(|c| c.image.as_str()),
        Some("code.forgejo.org/oci/ci:1")
    );
    assert_eq!(build.services.len(), 1);
    assert_eq!(build.services[0].name, "forgejo");
    assert_eq!(
        build.services[0].image,
        "code.forgejo.org/forgejo/forgejo:11"
    );
    assert!(
        build.payload.contains("SYNTH_GO_VERSION"),
        "workflow env is carried in the payload"
    );
}

#[test]
fn forgejo_testing() {
    let wf = parse_shape("forgejo-testing.yml");
    assert!(wf.on.push && wf.on.workflow_dispatch);
    let d: &[&str] = &["docker"];
    let checks: &[&str] = &["backend-checks", "frontend-checks"];
    // An object-valued matrix is named with Go's map rendering; sorted by that string.
    assert_jobs(
        &wf,
        &[
            ("backend-checks", "backend-checks", d, &[]),
            ("frontend-checks", "frontend-checks", d, &[]),
            ("test-unit", "test-unit", d, checks),
            ("test-e2e", "test-e2e", d, checks),
            (
                "test-remote-cacher",
                "test-remote-cacher (map[image:data.forgejo.org/oci/bitnami/redis:7.2 name:redis])",
                d,
                &["backend-checks", "frontend-checks", "test-unit"],
            ),
            (
                "test-remote-cacher",
                "test-remote-cacher (map[image:data.forgejo.org/oci/bitnami/valkey:7.2 name:valkey])",
                d,
                &["backend-checks", "frontend-checks", "test-unit"],
            ),
            (
                "test-remote-cacher",
                "test-remote-cacher (map[image:ghcr.io/microsoft/garnet-alpine:1.0.14 name:garnet])",
                d,
                &["backend-checks", "frontend-checks", "test-unit"],
            ),
            ("test-mysql", "test-mysql", d, checks),
            ("test-pgsql", "test-pgsql", d, checks),
            ("test-sqlite", "test-sqlite", d, checks),
            (
                "security-check",
                "security-check",
                d,
                &["test-sqlite", "test-pgsql", "test-mysql", "test-remote-cacher", "test-unit"],
            ),
            ("semgrep", "semgrep", d, &[]),
        ],
    );
    let pgsql = &wf.jobs[8];
    let services: Vec<(&str, &str)> = pgsql
        .services
        .iter()
        .map(|s| (s.name.as_str(), s.image.as_str()))
        .collect();
    assert_eq!(
        services,
        vec![
            ("minio", "data.forgejo.org/oci/bitnami/minio:2024.8.17"),
            ("ldap", "data.forgejo.org/oci/forgejo-test-openldap:1"),
            ("pgsql", "data.forgejo.org/oci/bitnami/postgresql:16"),
        ]
    );
    assert_eq!(
        wf.jobs[3].container.as_ref().map(|c| c.image.as_str()),
        Some("data.forgejo.org/oci/playwright:latest")
    );
}

#[test]
fn lillinfra_containers() {
    let wf = parse_shape("lillinfra-containers.yml");
    assert!(wf.on.push && wf.on.workflow_dispatch);
    assert_eq!(wf.on.schedules, vec!["@weekly"]);
    // The matrix needs the first job's output: one blocked placeholder until it is known.
    assert_jobs(
        &wf,
        &[
            (
                "generate-build-matrix",
                "generate-build-matrix",
                &["ubuntu-latest"],
                &[],
            ),
            (
                "build-container",
                "build-container (incomplete matrix)",
                &["alpine-latest"],
                &["generate-build-matrix"],
            ),
        ],
    );
    let pending = &wf.jobs[1];
    let missing = pending
        .incomplete_matrix
        .as_ref()
        .expect("matrix is incomplete");
    assert_eq!(
        (missing.job.as_str(), missing.output.as_str()),
        ("generate-build-matrix", "container_names")
    );

    let outputs: HashMap<String, HashMap<String, String>> = [(
        "generate-build-matrix".to_string(),
        [(
            "container_names".to_string(),
            r#"["web","mail","backup","proxy"]"#.to_string(),
        )]
        .into(),
    )]
    .into();
    let expanded = expand_incomplete_job(
        "containers.yml",
        pending,
        &outputs,
        &resolve_in_shapes,
        ParseOptions::default(),
    )
    .unwrap_or_else(|e| panic!("expansion failed: {e}"));
    let got: Vec<_> = expanded.iter().map(summary).collect();
    let want: Vec<_> = ["backup", "mail", "proxy", "web"]
        .iter()
        .map(|c| {
            (
                "build-container".to_string(),
                format!("build-container ({c})"),
                vec!["alpine-latest".to_string()],
                vec!["generate-build-matrix".to_string()],
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(expanded.iter().all(|j| j.incomplete_matrix.is_none()));
    for job in &expanded {
        assert_payload_is_single_job(job);
    }
    // Still without the output, the job cannot be expanded (Forgejo fails the run).
    assert!(expand_incomplete_job(
        "containers.yml",
        pending,
        &HashMap::new(),
        &resolve_in_shapes,
        ParseOptions::default()
    )
    .is_err());
}

#[test]
fn listenbrainz_ci() {
    let wf = parse_shape("listenbrainz-ci.yml");
    assert_jobs(
        &wf,
        &[
            ("build-check", "build-check", &["codeberg-small"], &[]),
            ("format-check", "format-check", &["codeberg-tiny"], &[]),
        ],
    );
}

#[test]
fn readeck_build() {
    // The call has `runs-on: docker`, so even Forgejo 15 keeps it one task for the runner.
    for options in [ParseOptions::default(), ParseOptions::for_forgejo_major(13)] {
        let content = read_shape("readeck-build.yml");
        let wf = parse_workflow_with(
            ".forgejo/workflows/build.yaml",
            &content,
            &resolve_in_shapes,
            options,
        )
        .unwrap_or_else(|e| panic!("readeck-build.yml must be accepted: {e}"));
        assert!(wf.on.workflow_dispatch && !wf.on.push);
        assert_jobs(
            &wf,
            &[
                ("tests", "tests", &["docker"], &[]),
                ("generate", "generate", &["docker"], &["tests"]),
                ("binary", "binary", &["docker"], &["generate"]),
                ("release", "release", &["docker"], &["binary"]),
            ],
        );
        assert_eq!(
            wf.jobs[0].kind,
            JobKind::ReusableCall {
                uses: "./.forgejo/workflows/readeck-tests.yaml".to_string()
            }
        );
        assert!(wf.jobs[0]
            .payload
            .contains("uses: ./.forgejo/workflows/readeck-tests.yaml"));
        assert_eq!(
            wf.jobs[2].container.as_ref().map(|c| c.image.as_str()),
            Some("docker.io/techknowlogick/xgo:latest")
        );
    }
}

#[test]
fn readeck_tests() {
    let wf = parse_shape("readeck-tests.yaml");
    assert!(wf.on.push);
    assert!(wf.on.events.iter().any(|e| e == "workflow_call"));
    assert_jobs(&wf, &[("tests", "tests", &["docker"], &[])]);
    let job = &wf.jobs[0];
    assert!(job
        .if_condition
        .as_deref()
        .is_some_and(|c| c.starts_with("github.event_name != 'pull_request'")));
    assert_eq!(
        job.container.as_ref().map(|c| c.image.as_str()),
        Some("codeberg.org/readeck/readeck-ci:latest")
    );
    assert_eq!(
        runs_of(job),
        vec!["echo \"lint\"", "echo \"unit tests\"", "sleep 5"]
    );
}

/// Every shape file has a test above; a new file must get one too.
#[test]
fn every_shape_file_has_a_test() {
    let tested = [
        "bartoostveen-check.yml",
        "bzd-pr-gate.yml",
        "emaintenance-deploy.yml",
        "ffmpeg-fate.yml",
        "flask-socketio-tests.yml",
        "forgejo-runner-test.yml",
        "forgejo-testing.yml",
        "lillinfra-containers.yml",
        "listenbrainz-ci.yml",
        "readeck-build.yml",
        "readeck-tests.yaml",
    ];
    let mut files: Vec<String> = std::fs::read_dir(shapes_dir())
        .expect("list shapes")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yml") || n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert_eq!(files, tested, "shape files and tests differ");
}
