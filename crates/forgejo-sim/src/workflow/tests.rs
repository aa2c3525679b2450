//! Unit tests of the parser as a whole: every `runs-on` form, matrices, reusable workflow
//! expansion, payloads, and inputs that are not workflows.

use proptest::prelude::*;
use serde_norway::Value;

use super::*;

fn no_files(_: &str) -> Option<String> {
    None
}

fn parse(yaml: &str) -> Workflow {
    parse_workflow(".forgejo/workflows/t.yml", yaml, &no_files)
        .unwrap_or_else(|e| panic!("rejected: {e}"))
}

fn parse_err(yaml: &str) -> WorkflowError {
    match parse_workflow(".forgejo/workflows/t.yml", yaml, &no_files) {
        Ok(wf) => panic!("accepted: {wf:?}"),
        Err(e) => e,
    }
}

fn labels(yaml_runs_on: &str) -> Vec<String> {
    let wf = parse(&format!(
        "on: push\njobs:\n  j:\n    runs-on: {yaml_runs_on}\n    steps: [{{run: 'true'}}]\n"
    ));
    wf.jobs[0].runs_on.clone()
}

fn names(wf: &Workflow) -> Vec<&str> {
    wf.jobs.iter().map(|j| j.name.as_str()).collect()
}

fn payload_job(job: &JobSpec) -> Value {
    let doc: Value = serde_norway::from_str(&job.payload).expect("payload is YAML");
    doc["jobs"][job.key.as_str()].clone()
}

#[test]
fn runs_on_string_and_list() {
    assert_eq!(labels("docker"), vec!["docker"]);
    assert_eq!(labels("\"codeberg-tiny\""), vec!["codeberg-tiny"]);
    assert_eq!(labels("[bookworm, test]"), vec!["bookworm", "test"]);
    assert_eq!(labels("\n      - a\n      - b"), vec!["a", "b"]);
}

#[test]
fn runs_on_group_object_puts_group_after_labels() {
    assert_eq!(
        labels("{group: gpu-pool, labels: [linux, x64]}"),
        vec!["linux", "x64", "gpu-pool"]
    );
    assert_eq!(labels("{group: gpu-pool}"), vec!["gpu-pool"]);
    assert_eq!(labels("{labels: single}"), vec!["single"]);
    assert!(labels("{group: [bad]}").is_empty());
}

#[test]
fn runs_on_matrix_expression_is_substituted() {
    let wf = parse(
        "on: push\njobs:\n  t:\n    strategy:\n      matrix:\n        os: [alpha, beta]\n        set: [[x, y]]\n    runs-on: ${{ matrix.os }}\n    steps: [{run: 'true'}]\n  u:\n    strategy:\n      matrix:\n        set: [[x, y]]\n    runs-on: ${{ matrix.set }}\n    steps: [{run: 'true'}]\n  v:\n    strategy:\n      matrix:\n        arch: [arm64]\n    runs-on: [linux, 'runner-${{ matrix.arch }}']\n    steps: [{run: 'true'}]\n",
    );
    let got: Vec<(&str, Vec<String>)> = wf
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.runs_on.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("t (alpha, [x y])", vec!["alpha".to_string()]),
            ("t (beta, [x y])", vec!["beta".to_string()]),
            ("u ([x y])", vec!["x".to_string(), "y".to_string()]),
            (
                "v (arm64)",
                vec!["linux".to_string(), "runner-arm64".to_string()]
            ),
        ]
    );
    assert!(wf.jobs.iter().all(|j| !j.incomplete_runs_on));
}

#[test]
fn runs_on_missing_or_unknown_dimension() {
    let wf = parse("on: push\njobs:\n  a:\n    steps: [{run: 'true'}]\n  b:\n    runs-on: ${{ matrix.os }}\n    steps: [{run: 'true'}]\n");
    assert!(
        wf.jobs[0].runs_on.is_empty(),
        "no runs-on means no labels: no runner ever matches"
    );
    assert!(!wf.jobs[0].incomplete_runs_on);
    assert!(
        wf.jobs[1].incomplete_runs_on,
        "Forgejo marks runs-on with an undefined dimension incomplete"
    );
}

#[test]
fn needs_as_string_or_list_and_if_kept_verbatim() {
    let wf = parse(
        "on: push\njobs:\n  a: {runs-on: x, steps: [{run: a}]}\n  b: {runs-on: x, needs: a, if: always(), steps: [{run: b}]}\n  c: {runs-on: x, needs: [a, b], if: false, steps: [{run: c}]}\n",
    );
    assert_eq!(wf.jobs[1].needs, vec!["a"]);
    assert_eq!(wf.jobs[2].needs, vec!["a", "b"]);
    assert_eq!(wf.jobs[1].if_condition.as_deref(), Some("always()"));
    assert_eq!(wf.jobs[2].if_condition.as_deref(), Some("false"));
    assert_eq!(wf.jobs[0].if_condition, None);
}

#[test]
fn include_and_exclude_shape_the_jobs() {
    let wf = parse(
        "on: push\njobs:\n  test:\n    runs-on: ${{ matrix.os }}\n    strategy:\n      matrix:\n        os: [linux, windows]\n        py: ['3.11', '3.12']\n        exclude:\n          - {os: windows, py: '3.11'}\n        include:\n          - {os: linux, py: '3.12', coverage: true}\n          - {os: macos, py: '3.12'}\n    steps: [{run: pytest}]\n",
    );
    assert_eq!(
        names(&wf),
        // sorted by display string: "(macos" < "(true" (the merged include adds `coverage`)
        vec![
            "test (linux, 3.11)",
            "test (macos, 3.12)",
            "test (true, linux, 3.12)",
            "test (windows, 3.12)"
        ]
    );
    let labels: Vec<&str> = wf.jobs.iter().map(|j| j.runs_on[0].as_str()).collect();
    assert_eq!(labels, vec!["linux", "macos", "linux", "windows"]);
    assert_eq!(wf.jobs[2].matrix.get("coverage"), Some(&Value::Bool(true)));
    assert!(wf.jobs.iter().all(|j| j.key == "test"));
}

#[test]
fn explicit_name_is_interpolated_without_suffix() {
    let wf = parse(
        "on: push\njobs:\n  t:\n    name: 'Test on ${{ matrix.os }} (${{ github.ref }})'\n    strategy: {matrix: {os: [a]}}\n    runs-on: x\n    steps: [{run: 'true'}]\n",
    );
    assert_eq!(names(&wf), vec!["Test on a (${{ github.ref }})"]);
}

#[test]
fn equal_names_get_numbered_and_long_names_are_cut() {
    let long = "n".repeat(300);
    let wf = parse(&format!(
        "on: push\njobs:\n  a: {{name: same, runs-on: x, steps: [{{run: a}}]}}\n  b: {{name: same, runs-on: x, steps: [{{run: b}}]}}\n  c: {{name: same, runs-on: x, steps: [{{run: c}}]}}\n  d: {{name: {long}, runs-on: x, steps: [{{run: d}}]}}\n"
    ));
    assert_eq!(&names(&wf)[..3], &["same", "same-1", "same-2"]);
    assert_eq!(wf.jobs[3].name.len(), MAX_JOB_NAME_BYTES);
}

#[test]
fn carried_fields() {
    let wf = parse(
        "on: push\njobs:\n  a:\n    runs-on: x\n    timeout-minutes: 30\n    concurrency: deploy-${{ matrix.env }}\n    strategy: {matrix: {env: [prod]}}\n    container: node:20\n    services:\n      db: {image: postgres:16, ports: ['5432'], healthcheck: dropped}\n    outputs: {v: '${{ steps.s.outputs.v }}'}\n    steps:\n      - {id: s, name: Build, run: make}\n      - uses: actions/checkout@v4\n  b:\n    runs-on: x\n    timeout-minutes: '5'\n    concurrency: {group: g, cancel-in-progress: true}\n    container: {image: alpine:3, options: --privileged}\n    steps: [{run: 'true'}]\n",
    );
    let (a, b) = (&wf.jobs[0], &wf.jobs[1]);
    assert_eq!(a.timeout_minutes, Some(30));
    assert_eq!(a.concurrency.as_deref(), Some("deploy-prod"));
    assert_eq!(
        a.container,
        Some(ContainerSpec {
            image: "node:20".into()
        })
    );
    assert_eq!(
        a.services,
        vec![ServiceSpec {
            name: "db".into(),
            image: "postgres:16".into()
        }]
    );
    assert_eq!(
        a.outputs.get("v").map(String::as_str),
        Some("${{ steps.s.outputs.v }}")
    );
    assert_eq!(
        a.steps,
        vec![
            StepSpec {
                id: Some("s".into()),
                name: Some("Build".into()),
                run: Some("make".into()),
                uses: None
            },
            StepSpec {
                id: None,
                name: None,
                run: None,
                uses: Some("actions/checkout@v4".into())
            },
        ]
    );
    assert!(
        payload_job(a)["services"]["db"]
            .get("healthcheck")
            .is_none(),
        "unknown service keys are dropped"
    );
    assert_eq!(b.timeout_minutes, Some(5));
    assert_eq!(b.concurrency.as_deref(), Some("g"));
    assert_eq!(b.concurrency_cancel_in_progress, Some(true));
    assert_eq!(
        b.container,
        Some(ContainerSpec {
            image: "alpine:3".into()
        })
    );
}

#[test]
fn payload_is_the_single_job_workflow() {
    let wf = parse(
        "name: CI\non: [push]\nenv: {A: '1'}\npermissions: {}\njobs:\n  a: {runs-on: x, steps: [{run: a}]}\n  b:\n    needs: a\n    runs-on: [x, y]\n    permissions: {contents: read}\n    continue-on-error: true\n    strategy: {fail-fast: false, matrix: {v: [1, 2]}}\n    steps: [{run: 'echo ${{ matrix.v }}', continue-on-error: true}]\n",
    );
    let b1 = &wf.jobs[1];
    let doc: Value = serde_norway::from_str(&b1.payload).expect("YAML");
    assert_eq!(doc["name"], Value::String("CI".into()));
    assert_eq!(doc["env"]["A"], Value::String("1".into()));
    assert!(doc.get("permissions").is_none());
    let job = &doc["jobs"]["b"];
    assert_eq!(job["name"], Value::String("b (1)".into()));
    assert!(job.get("needs").is_none());
    assert!(job.get("permissions").is_none() && job.get("continue-on-error").is_none());
    assert_eq!(
        job["runs-on"],
        serde_norway::from_str::<Value>("[x, y]").unwrap()
    );
    assert_eq!(
        job["strategy"],
        serde_norway::from_str::<Value>("{fail-fast: false, matrix: {v: [1]}}").unwrap()
    );
    assert_eq!(job["steps"][0]["continue-on-error"], Value::Bool(true));
    assert_eq!(doc["jobs"].as_mapping().map(|m| m.len()), Some(1));
    assert!(
        b1.payload.contains("\n\"on\":"),
        "top-level on is quoted like Go writes it: {}",
        b1.payload
    );
    // A single label is written as a plain string, as Forgejo's encodeRunsOn does.
    assert_eq!(
        payload_job(&wf.jobs[0])["runs-on"],
        Value::String("x".into())
    );
}

#[test]
fn triggers_from_every_on_form() {
    assert!(
        parse("on: push\njobs: {a: {runs-on: x, steps: [{run: a}]}}")
            .on
            .push
    );
    let t = parse("on: [workflow_dispatch]\njobs: {a: {runs-on: x, steps: [{run: a}]}}").on;
    assert!(t.workflow_dispatch && !t.push);
    let t = parse("on:\n  schedule:\n    - cron: '*/1 * * * *'\n  issues:\njobs: {a: {runs-on: x, steps: [{run: a}]}}").on;
    assert_eq!(t.schedules, vec!["*/1 * * * *"]);
    assert!(!t.push && !t.workflow_dispatch);
}

const CALLEE: &str = "on:\n  workflow_call:\n    inputs:\n      target: {type: string, default: world}\n      level: {type: number, default: 1}\njobs:\n  lint:\n    runs-on: docker\n    steps: [{run: lint}]\n  test:\n    needs: lint\n    runs-on: ${{ inputs.target }}\n    steps: [{run: test}]\n";

fn callee_files(path: &str) -> Option<String> {
    match path {
        ".forgejo/workflows/callee.yml" => Some(CALLEE.to_string()),
        ".forgejo/workflows/loop.yml" => Some(
            "on: workflow_call\njobs:\n  again:\n    uses: ./.forgejo/workflows/loop.yml\n"
                .to_string(),
        ),
        _ => None,
    }
}

const CALLER: &str = "on: push\njobs:\n  setup: {runs-on: docker, steps: [{run: setup}]}\n  call:\n    needs: setup\n    uses: ./.forgejo/workflows/callee.yml\n    with: {target: lxc}\n  after: {needs: call, runs-on: docker, steps: [{run: after}]}\n";

#[test]
fn local_reusable_workflow_without_runs_on_is_expanded() {
    let wf =
        parse_workflow(".forgejo/workflows/caller.yml", CALLER, &callee_files).expect("accepted");
    let got: Vec<(&str, &str, Vec<String>, Vec<String>)> = wf
        .jobs
        .iter()
        .map(|j| {
            (
                j.key.as_str(),
                j.name.as_str(),
                j.runs_on.clone(),
                j.needs.clone(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            ("setup", "setup", s(&["docker"]), s(&[])),
            (
                "call",
                "call",
                s(&[]),
                s(&["setup", "call.lint", "call.test"])
            ),
            ("after", "after", s(&["docker"]), s(&["call"])),
            ("call.lint", "lint", s(&["docker"]), s(&["setup"])),
            ("call.test", "test", s(&["lxc"]), s(&["call.lint", "setup"])),
        ]
    );
    let call = &wf.jobs[1];
    assert_eq!(
        call.kind,
        JobKind::WorkflowCallOuter {
            uses: "./.forgejo/workflows/callee.yml".into()
        }
    );
    assert_eq!(call.if_condition.as_deref(), Some("false"));
    let call_payload: Value = serde_norway::from_str(&call.payload).expect("yaml");
    assert_eq!(call_payload["jobs"]["call"]["if"], Value::Bool(false));
    assert!(call_payload["jobs"]["call"].get("uses").is_none());
    let call_id = call_payload["__metadata"]["workflow_call_id"]
        .as_str()
        .expect("call id")
        .to_string();
    assert_eq!(
        call_payload["__metadata"]["workflow_call_inputs"]["target"],
        Value::String("lxc".into())
    );

    let inner: Value = serde_norway::from_str(&wf.jobs[4].payload).expect("yaml");
    assert_eq!(
        inner["__metadata"]["workflow_call_parent"].as_str(),
        Some(call_id.as_str())
    );
    assert_eq!(
        inner["on"]["workflow_call"]["inputs"]["target"]["default"],
        Value::String("lxc".into())
    );
    assert_eq!(
        inner["on"]["workflow_call"]["inputs"]["level"]["default"],
        Value::Number(1.into())
    );
    assert_eq!(wf.jobs[4].kind, JobKind::Steps);
}

#[test]
fn reusable_workflow_stays_one_job_before_forgejo_15_or_with_runs_on() {
    let wf = parse_workflow_with(
        "c.yml",
        CALLER,
        &callee_files,
        ParseOptions::for_forgejo_major(14),
    )
    .expect("ok");
    assert_eq!(wf.jobs.len(), 3);
    assert_eq!(
        wf.jobs[1].kind,
        JobKind::ReusableCall {
            uses: "./.forgejo/workflows/callee.yml".into()
        }
    );
    assert!(wf.jobs[1].runs_on.is_empty());

    let with_runs_on = CALLER.replace("    uses: ./", "    runs-on: docker\n    uses: ./");
    let wf = parse_workflow("c.yml", &with_runs_on, &callee_files).expect("ok");
    assert_eq!(wf.jobs.len(), 3);
    assert_eq!(wf.jobs[1].runs_on, vec!["docker"]);
}

#[test]
fn reusable_workflow_errors() {
    let missing = CALLER.replace("callee.yml", "absent.yml");
    let err = parse_workflow("c.yml", &missing, &callee_files).unwrap_err();
    assert!(
        matches!(err, WorkflowError::Reusable { .. }) && err.to_string().contains("absent.yml"),
        "{err}"
    );

    let looping = "on: push\njobs:\n  go:\n    uses: ./.forgejo/workflows/loop.yml\n";
    let err = parse_workflow("c.yml", looping, &callee_files).unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");

    let invalid = "on: push\njobs:\n  go:\n    uses: actions/checkout@v4\n";
    assert!(matches!(
        parse_workflow("c.yml", invalid, &callee_files),
        Err(WorkflowError::Reusable { .. })
    ));

    let remote = "on: push\njobs:\n  go:\n    uses: org/repo/.forgejo/workflows/x.yml@main\n";
    let wf = parse_workflow("c.yml", remote, &callee_files).expect("remote calls stay one job");
    assert_eq!(
        wf.jobs[0].kind,
        JobKind::ReusableCall {
            uses: "org/repo/.forgejo/workflows/x.yml@main".into()
        }
    );
}

#[test]
fn not_workflows_are_errors_with_clear_messages() {
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("   \n# only a comment\n", "empty"),
        ("~", "empty"),
        ("on: push\njobs: [a, b]", "must be a mapping"),
        ("on: push\njobs: build", "must be a mapping"),
        ("on: push\njobs: {}", "`jobs:` is empty"),
        ("on: push\njobs:\n  a: run this", "job \"a\""),
        ("on: push\njobs:\n  a:\n", "job \"a\""),
        (
            "on: push\njobs:\n  a: {runs-on: x, steps: run}",
            "`steps` must be a list",
        ),
        (
            "on: push\njobs:\n  a: {runs-on: x, services: {db: postgres}}",
            "service \"db\"",
        ),
        ("on: push\n", "no `jobs:`"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("jobs:\n  a: {runs-on: x, steps: [{run: a}]}", "no `on:`"),
        (
            "on: {push: [main]}\njobs:\n  a: {runs-on: x, steps: [{run: a}]}",
            "invalid `on:`",
        ),
        ("on: push\njobs:\n  a: {runs-on: x\n", "not valid YAML"),
        ("on: push\non: push\njobs: {}", "not valid YAML"),
        (
            "on: push\njobs:\n  a:\n    strategy: {matrix: {a: [1], exclude: [{b: 2}]}}\n",
            "exclude key \"b\"",
        ),
    ];
    for (yaml, expected) in cases {
        let err = parse_err(yaml);
        let text = err.to_string();
        assert!(
            text.starts_with(".forgejo/workflows/t.yml: "),
            "message names the file: {text}"
        );
        assert!(
            text.contains(expected),
            "for {yaml:?} expected {expected:?} in {text:?}"
        );
    }
}

#[test]
fn gitlab_ci_file_is_not_a_workflow() {
    let gitlab = "stages: [build, test]\nvariables:\n  GIT_DEPTH: 1\nbuild:\n  stage: build\n  image: rust:1\n  script:\n    - cargo build\ntest:\n  stage: test\n  script: [cargo test]\n";
    assert!(matches!(
        parse_err(gitlab),
        WorkflowError::MissingJobs { .. }
    ));
    // Woodpecker-like: has `steps` at the top, no jobs either.
    assert!(matches!(
        parse_err("when: {event: push}\nsteps:\n  build: {image: alpine, commands: [make]}\n"),
        WorkflowError::MissingJobs { .. }
    ));
}

#[test]
fn huge_matrix_is_refused_without_building_it() {
    let dims: Vec<String> = (0..16)
        .map(|i| format!("d{i}: [a, b, c, d, e, f, g, h]"))
        .collect();
    let yaml = format!("on: push\njobs:\n  m:\n    runs-on: x\n    strategy:\n      matrix: {{{}}}\n    steps: [{{run: 'true'}}]\n", dims.join(", "));
    let started = std::time::Instant::now();
    let err = parse_err(&yaml);
    assert!(
        matches!(err, WorkflowError::Matrix { .. })
            && err
                .to_string()
                .contains(&MAX_MATRIX_COMBINATIONS.to_string()),
        "{err}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn too_many_jobs_in_one_file_is_refused() {
    let mut yaml = String::from("on: push\njobs:\n");
    for i in 0..9 {
        yaml.push_str(&format!("  j{i}:\n    runs-on: x\n    strategy: {{matrix: {{a: [{}]}}}}\n    steps: [{{run: 'true'}}]\n", (0..256).map(|n| n.to_string()).collect::<Vec<_>>().join(",")));
    }
    assert!(matches!(parse_err(&yaml), WorkflowError::TooLarge { .. }));
}

#[test]
fn alias_bomb_is_refused() {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]\non: push\njobs: {a: {runs-on: *h}}\n";
    assert!(matches!(parse_err(bomb), WorkflowError::Yaml { .. }));
}

#[test]
fn anchors_and_merge_keys_are_honoured() {
    let wf = parse("on: push\nx-base: &base {runs-on: docker, steps: [{run: make}]}\njobs:\n  a: *base\n  b:\n    <<: *base\n    needs: a\n");
    assert_eq!(wf.jobs[1].runs_on, vec!["docker"]);
    assert_eq!(wf.jobs[1].needs, vec!["a"]);
}

#[test]
fn persistent_incomplete_runs_on_cannot_be_expanded() {
    let wf = parse("on: push\njobs:\n  a:\n    runs-on: ${{ matrix.os }}\n    steps: [{run: a}]\n");
    let job = &wf.jobs[0];
    assert!(job.incomplete_runs_on);
    let err = expand_incomplete_job(
        "t.yml",
        job,
        &HashMap::new(),
        &no_files,
        ParseOptions::default(),
    )
    .expect_err("still incomplete");
    assert!(err.to_string().contains("runs-on"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        let _ = parse_workflow("p.yml", &text, &no_files);
    }

    #[test]
    fn workflow_like_text_never_panics(
        parts in proptest::collection::vec(
            prop_oneof![
                Just("on: push\n"), Just("jobs:\n"), Just("  a:\n"), Just("  b:\n"), Just("    runs-on: "),
                Just("    needs: "), Just("    strategy:\n      matrix:\n"), Just("        x: [1, 2]\n"),
                Just("        include: [{x: 3}]\n"), Just("        exclude: [{y: 1}]\n"), Just("    uses: ./.forgejo/workflows/p.yml\n"),
                Just("${{ matrix.x }}\n"), Just("${{ fromJSON('[1') }}\n"), Just("{group: g, labels: [l]}\n"),
                Just("[a, {b: c}]\n"), Just("    steps:\n      - run: x\n"), Just("&a "), Just("*a\n"), Just("~\n"),
                Just("a\n"), Just("    container: {image: [x]}\n"), Just("    services: {s: 1}\n"), Just("- \n"),
            ],
            0..24,
        )
    ) {
        let text: String = parts.concat();
        let resolve = |_: &str| Some(text.clone());
        let _ = parse_workflow(".forgejo/workflows/p.yml", &text, &resolve);
    }
}
