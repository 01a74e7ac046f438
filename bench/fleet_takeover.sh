#!/usr/bin/env bash
# Fleet takeover bench: two nodes share one PostgreSQL; while the node holding an app's lease
# follows a deployment, it is SIGKILLed; the time until the other node holds the lease (its
# first write for the app: the takeover's UPDATE of `lanes`) and until the job is finished
# (its deployment adopted and followed to the end, never posted again, the victim started
# again to place its file in done/), median of ROUNDS.
#
#   bench/fleet_takeover.sh                       # 5 rounds, lease 15 s (the default)
#   ROUNDS=1 LEASE=3s bench/fleet_takeover.sh     # the smoke's size
#
# The expected takeover is the lease's remaining time plus up to one `poll`: the lease was
# renewed at most lease/3 before the kill. Needs cargo, curl, python3, psql, tar. Exit status 0
# when every round was taken over and deployed once, 1 otherwise, 2 on setup errors.
set -euo pipefail
cd "$(dirname "$0")/.."
script=bench/fleet_takeover.sh

ROUNDS="${ROUNDS:-5}"
LEASE="${LEASE:-15s}"
POLL="${POLL:-2s}"
STEP="${STEP:-2s}"
source bench/fleet_common.sh

app=bench-app
start_fake --step "$STEP" --app "$app"
start_db
for n in n1 n2; do
    node_config "$n" "$LEASE" "$POLL" 600 "$app"
    start_node "$n"
done

takeovers=() finishes=() failures=0
for round in $(seq "$ROUNDS"); do
    created_before="$(stat_of "['deployments_created']")"
    drop_archive n1 "$app" "round-$round.tar.gz"
    # Wait until a deployment of this round runs and a node holds the lane.
    victim=""
    for _ in $(seq 600); do
        created="$(stat_of "['deployments_created']")"
        finished="$(stat_of "['deployments_finished']")"
        victim="$(holder "$app")"
        ((created > created_before && finished < created)) && [[ -n "$victim" ]] && break
        victim=""
        sleep 0.05
    done
    [[ -n "$victim" ]] || { echo "$script: round $round: no deployment under way" >&2; exit 2; }
    t0="$(now_ms)"
    kill -KILL "${node_pid[$victim]}"
    wait "${node_pid[$victim]}" 2>/dev/null || true
    other=n1
    [[ $victim == n1 ]] && other=n2
    taken=""
    for _ in $(seq 2000); do
        if [[ "$(holder "$app")" == "$other" ]]; then
            taken=$(($(now_ms) - t0))
            break
        fi
        sleep 0.05
    done
    # The victim comes back: it took the file in, so it places it in done/.
    start_node "$victim"
    done_at=""
    for _ in $(seq 2000); do
        created="$(stat_of "['deployments_created']")"
        finished="$(stat_of "['deployments_finished']")"
        if ((finished == created)) && ls "$work"/n1/drop/"$app"/done/round-"$round".tar.gz >/dev/null 2>&1; then
            done_at=$(($(now_ms) - t0))
            break
        fi
        sleep 0.1
    done
    if [[ -z "$taken" || -z "$done_at" ]]; then
        echo "round $round: $victim killed, taken over: ${taken:-never}, finished: ${done_at:-never}" >&2
        failures=$((failures + 1))
    else
        echo "round $round: $victim killed, $other held the lane after $taken ms, job done after $done_at ms" >&2
        takeovers+=("$taken")
        finishes+=("$done_at")
    fi
done

deployments="$(stat_of "['deployments_created']")"
per_ref="$(stat_of "['timeline']['max_deployments_per_git_ref']")"
overlaps="$(stat_of "['timeline']['overlapping_deployments']")"
ms_to_s() { awk -v ms="$1" 'BEGIN { if (ms == "n/a") print "n/a"; else printf "%.2f s", ms / 1000 }'; }
echo
echo "fleet takeover after SIGKILL of the holder ($ROUNDS rounds, lease $LEASE, poll $POLL, build 4 x $STEP, $PROFILE)"
printf '  %-44s %s\n' "lease taken by the other node, median" "$(ms_to_s "$(printf '%s\n' "${takeovers[@]}" | median)")"
printf '  %-44s %s\n' "  min / max" "$(ms_to_s "$(printf '%s\n' "${takeovers[@]}" | sort -n | head -n1)") / $(ms_to_s "$(printf '%s\n' "${takeovers[@]}" | sort -n | tail -n1)")"
printf '  %-44s %s\n' "job finished after the kill, median" "$(ms_to_s "$(printf '%s\n' "${finishes[@]}" | median)")"
printf '  %-44s %s\n' "deployments (one per round)" "$deployments"
printf '  %-44s %s\n' "max deployments per git_ref" "$per_ref"
printf '  %-44s %s\n' "overlapping deployments of the app" "$overlaps"
printf '  %-44s %s\n' "rounds not taken over or not finished" "$failures"
((failures == 0 && per_ref <= 1 && overlaps == 0 && deployments == ROUNDS))
