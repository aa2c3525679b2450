#!/usr/bin/env bash
# seed-style.sh: the simplest possible "autoscaler" for Forgejo Actions, written from
# ../shared/forgejo-contract.md. It seeds a Forgejo instance (API token, repository, scheduled
# workflow), then polls the repository's jobs endpoint and, one job at a time, registers a fresh
# runner with the job's labels and runs `one-job` in a fresh directory. It is the sequential
# baseline of the benchmarks and a client of the simulator that the simulator's authors did not write.
#
# Usage: tests/seed-style.sh [options]
#   --url URL            Forgejo base URL              (env FORGEJO_URL, default http://127.0.0.1:3000)
#   --user NAME          user with a password          (env FORGEJO_USER, default root)
#   --password-file F    file holding that password    (env FORGEJO_PASSWORD_FILE; or env FORGEJO_PASSWORD)
#   --repo NAME          repository to create          (env REPO, default on-demand)
#   --interval SECONDS   poll interval, may be decimal (env POLL_INTERVAL, default 5)
#   --max-jobs N         stop after N jobs; 0 = never  (env MAX_JOBS, default 4)
#   --timeout SECONDS    give up (exit 1) after this;  (env TIMEOUT, default 0 = never)
#   --work-dir DIR       where runner directories go   (env WORK_DIR, default a new temporary directory)
#   --keep-work-dir      do not delete WORK_DIR at exit (env KEEP_WORK_DIR=1)
#   --no-seed            skip token/repo/workflow creation; needs env FORGEJO_TOKEN_FILE (a file holding
#                        an API token) and an existing repository
#   -h, --help
# Other environment:
#   RUNNER_BIN        runner binary (default forgejo-runner); any binary with forgejo-runner's
#                     `register` and `one-job` commands works (e.g. fake-forgejo-runner)
#   LABELS            labels passed to the jobs endpoint (default trixie,bookworm,test). Forgejo 13
#                     lists a job only when every one of its labels is passed, so pass them all.
#   RUNNER_LABEL_SCHEMA  suffix given to each label when registering (default ":host", so the real
#                     forgejo-runner runs jobs on the host and needs no Docker)
#   CURL              curl binary (default curl)
#
# The workflow committed to .forgejo/workflows/on-demand.yml has two jobs on a one-minute schedule:
# `first-job` (runs-on trixie) and `second-job` (runs-on [bookworm, test]).
#
# Exit status: 0 after MAX_JOBS jobs were run; 1 on any error (HTTP error, failed `register`, three
# `one-job` failures in a row, timeout).
#
# Secrets: the password and the API token reach curl only through config files of mode 0600
# (`curl -K FILE`), never through argv. The registration token is given to `RUNNER_BIN register
# --token`, because that is the only way forgejo-runner's `register` accepts it.
set -euo pipefail
umask 077

log() { printf 'seed-style: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

FORGEJO_URL="${FORGEJO_URL:-http://127.0.0.1:3000}"
FORGEJO_USER="${FORGEJO_USER:-root}"
FORGEJO_PASSWORD_FILE="${FORGEJO_PASSWORD_FILE:-}"
REPO="${REPO:-on-demand}"
POLL_INTERVAL="${POLL_INTERVAL:-5}"
MAX_JOBS="${MAX_JOBS:-4}"
TIMEOUT="${TIMEOUT:-0}"
WORK_DIR="${WORK_DIR:-}"
KEEP_WORK_DIR="${KEEP_WORK_DIR:-0}"
SEED=1
RUNNER_BIN="${RUNNER_BIN:-forgejo-runner}"
LABELS="${LABELS:-trixie,bookworm,test}"
RUNNER_LABEL_SCHEMA="${RUNNER_LABEL_SCHEMA-:host}"
CURL="${CURL:-curl}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --url) FORGEJO_URL="$2"; shift 2 ;;
        --user) FORGEJO_USER="$2"; shift 2 ;;
        --password-file) FORGEJO_PASSWORD_FILE="$2"; shift 2 ;;
        --repo) REPO="$2"; shift 2 ;;
        --interval) POLL_INTERVAL="$2"; shift 2 ;;
        --max-jobs) MAX_JOBS="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        --work-dir) WORK_DIR="$2"; shift 2 ;;
        --keep-work-dir) KEEP_WORK_DIR=1; shift ;;
        --no-seed) SEED=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

FORGEJO_URL="${FORGEJO_URL%/}"
API="$FORGEJO_URL/api/v1"
[[ "$MAX_JOBS" =~ ^[0-9]+$ ]] || die "MAX_JOBS must be a number, got '$MAX_JOBS'"
[[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "TIMEOUT must be whole seconds, got '$TIMEOUT'"
[[ "$POLL_INTERVAL" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "POLL_INTERVAL must be a number, got '$POLL_INTERVAL'"
command -v jq >/dev/null || die "jq is required"
command -v "$CURL" >/dev/null || die "curl is required"
command -v "$RUNNER_BIN" >/dev/null || die "runner binary '$RUNNER_BIN' not found (set RUNNER_BIN)"

if [[ -z "$WORK_DIR" ]]; then
    WORK_DIR="$(mktemp -d "${TMPDIR:-/tmp}/seed-style.XXXXXX")"
else
    mkdir -p "$WORK_DIR"
fi
WORK_DIR="$(cd "$WORK_DIR" && pwd)"
cleanup() {
    if [[ "$KEEP_WORK_DIR" != 1 ]]; then rm -rf "$WORK_DIR"; fi
}
trap cleanup EXIT

# Quotes a value for a curl config file: inside double quotes, backslash and quote are escaped.
curlrc_quote() {
    local v="$1"
    v="${v//\\/\\\\}"
    v="${v//\"/\\\"}"
    printf '"%s"' "$v"
}

# Config files that carry credentials to curl (mode 0600 thanks to umask 077).
BASIC_RC="$WORK_DIR/basic-auth.curlrc"
TOKEN_RC="$WORK_DIR/api-token.curlrc"

write_basic_rc() {
    local password
    if [[ -n "$FORGEJO_PASSWORD_FILE" ]]; then
        [[ -r "$FORGEJO_PASSWORD_FILE" ]] || die "cannot read password file $FORGEJO_PASSWORD_FILE"
        IFS= read -r password <"$FORGEJO_PASSWORD_FILE" || [[ -n "$password" ]] || die "empty password file"
    elif [[ -n "${FORGEJO_PASSWORD:-}" ]]; then
        password="$FORGEJO_PASSWORD"
    else
        die "no password: set FORGEJO_PASSWORD_FILE (or FORGEJO_PASSWORD)"
    fi
    printf 'user = %s\n' "$(curlrc_quote "$FORGEJO_USER:$password")" >"$BASIC_RC"
}

write_token_rc() {
    printf 'header = %s\n' "$(curlrc_quote "Authorization: token $1")" >"$TOKEN_RC"
}

# api AUTH_RC METHOD PATH [JSON_BODY]: prints the response body; fails on a status >= 400
# with the status and the server's message (error bodies hold no secrets).
api() {
    local rc="$1" method="$2" path="$3" body="${4:-}" out status
    out="$(mktemp "$WORK_DIR/response.XXXXXX")"
    local args=(--silent --show-error --max-time 30 -K "$rc" -X "$method"
        -H 'Accept: application/json' -o "$out" -w '%{http_code}')
    if [[ -n "$body" ]]; then
        args+=(-H 'Content-Type: application/json' --data-binary @-)
    fi
    if ! status="$(printf '%s' "$body" | "$CURL" "${args[@]}" "$API$path")"; then
        rm -f "$out"
        die "$method $path: connection failed"
    fi
    if [[ "$status" -ge 400 ]]; then
        local message
        message="$(jq -r '.message? // empty' <"$out" 2>/dev/null || true)"
        rm -f "$out"
        die "$method $path: HTTP $status ${message}"
    fi
    cat "$out"
    rm -f "$out"
}

WORKFLOW_YAML='name: on-demand
on:
  schedule:
    - cron: "* * * * *"
jobs:
  first-job:
    runs-on: trixie
    steps:
      - run: echo "first job on $(uname -s)"
  second-job:
    runs-on: [bookworm, test]
    steps:
      - run: echo "second job"
'

seed() {
    write_basic_rc
    local token_name token
    token_name="seed-style-$(date +%s)-$$"
    token="$(api "$BASIC_RC" POST "/users/$FORGEJO_USER/tokens" \
        "$(jq -cn --arg n "$token_name" '{name: $n, scopes: ["write:repository"]}')" | jq -r '.sha1 // empty')"
    [[ -n "$token" ]] || die "token creation returned no sha1"
    write_token_rc "$token"
    unset token
    log "created API token '$token_name'"

    api "$TOKEN_RC" POST /user/repos \
        "$(jq -cn --arg n "$REPO" '{name: $n, auto_init: true, private: false}')" >/dev/null
    log "created repository $FORGEJO_USER/$REPO"

    local content
    content="$(printf '%s' "$WORKFLOW_YAML" | base64 -w0)"
    api "$TOKEN_RC" POST "/repos/$FORGEJO_USER/$REPO/contents/.forgejo/workflows/on-demand.yml" \
        "$(jq -cn --arg c "$content" '{content: $c, message: "on-demand workflow"}')" >/dev/null
    log "committed .forgejo/workflows/on-demand.yml (schedule: every minute)"
}

if [[ "$SEED" == 1 ]]; then
    seed
else
    [[ -r "${FORGEJO_TOKEN_FILE:-}" ]] || die "--no-seed needs FORGEJO_TOKEN_FILE"
    IFS= read -r existing_token <"$FORGEJO_TOKEN_FILE" || [[ -n "$existing_token" ]] || die "empty token file"
    write_token_rc "$existing_token"
    unset existing_token
fi

REGISTRATION_TOKEN="$(api "$TOKEN_RC" GET "/repos/$FORGEJO_USER/$REPO/actions/runners/registration-token" |
    jq -r '.token // empty')"
[[ -n "$REGISTRATION_TOKEN" ]] || die "no registration token in the response"
log "got a registration token"

# run_job ID NAME LABELS_JSON: registers a runner with exactly the job's labels in a fresh
# directory and runs one job there. Returns 0 when the runner took a task and ran it.
run_job() {
    local id="$1" name="$2" runs_on="$3" dir labels
    dir="$WORK_DIR/runner-$id"
    mkdir -p "$dir"
    labels="$(jq -r --arg s "$RUNNER_LABEL_SCHEMA" 'map(. + $s) | join(",")' <<<"$runs_on")"
    log "job $id ($name): registering a runner with labels $labels"
    if ! (cd "$dir" && "$RUNNER_BIN" register --no-interactive --instance "$FORGEJO_URL" \
        --token "$REGISTRATION_TOKEN" --name "seed-style-$id" --labels "$labels" </dev/null >register.log 2>&1); then
        log "register failed:"
        sed 's/^/    /' "$dir/register.log" >&2
        die "cannot register a runner"
    fi
    local rc=0
    (cd "$dir" && "$RUNNER_BIN" one-job </dev/null >one-job.log 2>&1) || rc=$?
    if [[ "$rc" -ne 0 ]]; then
        log "one-job for job $id exited $rc (no task, or an error):"
        tail -n 20 "$dir/one-job.log" | sed 's/^/    /' >&2
        return 1
    fi
    log "job $id ($name): one-job finished"
}

start_time=$SECONDS
processed=0
failures=0
while [[ "$MAX_JOBS" -eq 0 || "$processed" -lt "$MAX_JOBS" ]]; do
    if [[ "$TIMEOUT" -gt 0 && $((SECONDS - start_time)) -ge "$TIMEOUT" ]]; then
        die "timeout after ${TIMEOUT}s with $processed of $MAX_JOBS jobs done"
    fi
    jobs_json="$(api "$TOKEN_RC" GET "/repos/$FORGEJO_USER/$REPO/actions/runners/jobs?labels=$LABELS")"
    # Forgejo answers `null` (not []) when no job matches; `status` may also be `running`.
    waiting="$(jq -c 'if type == "array" then [.[] | select(.status == "waiting")]
                      elif . == null then []
                      else error("unexpected jobs body") end' <<<"$jobs_json")" ||
        die "jobs endpoint returned something that is neither an array nor null"
    count="$(jq 'length' <<<"$waiting")"
    if [[ "$count" -eq 0 ]]; then
        sleep "$POLL_INTERVAL"
        continue
    fi
    # The runner always takes the oldest matching job, so work through them oldest first.
    while IFS=$'\t' read -r id name runs_on; do
        if ! run_job "$id" "$name" "$runs_on"; then
            # Another client may have taken or cancelled the job meanwhile; give up only when
            # the runner keeps failing.
            failures=$((failures + 1))
            [[ "$failures" -lt 3 ]] || die "the runner failed $failures times in a row"
            continue
        fi
        failures=0
        processed=$((processed + 1))
        log "$processed job(s) done"
        if [[ "$MAX_JOBS" -ne 0 && "$processed" -ge "$MAX_JOBS" ]]; then
            break
        fi
    done < <(jq -r 'sort_by(.id) | .[] | [(.id | tostring), .name, (.runs_on | tojson)] | @tsv' <<<"$waiting")
done
log "done: $processed job(s) processed"
