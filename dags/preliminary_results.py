"""
### Preliminary results

At the `preliminary_results` event: show the validated results, wait for an
organizer's approval, then publish them (JSON, CSV, the leaderboard pages and plots)
and email each team its rank of N, metrics, runtime and score per track.

- `review_results`: the ranked tables and the Great Expectations summary (fails with the
  reason when no validated results of the frozen set are stored: score first).
- `approval_needed`: goes straight to publishing when the challenge turned approval off
  or an organizer already approved exactly this table.
- `approve_publication`: the approval step (Required Actions in the UI). Approve:
  published at once; Reject: nothing is published (re-score, then trigger again).
- `publish_preliminary_results`: never before the promised instant. Triggered by hand
  before it, the run only records the approval; the run at the instant publishes.

Organizers are emailed when the results wait for their approval (not published yet)
and when a task fails: at the promised instant they hear if the results are not out.
Each team is emailed once, however often the run is cleared.
"""

from __future__ import annotations

from airflow.sdk import get_current_context, task

from mai_ops.challenge.timeline import DagPhase
from mai_ops_airflow.dag_header import (
    events_schedule,
    for_each_challenge,
    organizer_errors_fail_fast,
    phase_dag,
    run_info,
)

PHASE = DagPhase.PRELIMINARY_RESULTS
REVIEW, APPROVE, PUBLISH = "review_results", "approve_publication", "publish_preliminary_results"


def build(challenge, path, instants):
    from mai_ops_airflow.alerts import approval_request

    @phase_dag(challenge, path, PHASE, __doc__, events_schedule(challenge, PHASE, instants))
    def preliminary_results():
        @task(task_id=REVIEW)
        def review_results():
            from mai_ops import tasks

            return organizer_errors_fail_fast(tasks.review_results, path)

        @task.branch
        def approval_needed(review: dict):
            if not challenge.approval or review["approved"]:
                return PUBLISH
            return APPROVE

        @task
        def record_approval(review: dict, decision: dict):
            from mai_ops import tasks

            return tasks.record_approval(path, review["digest"], decision["responded_by_user"])

        # Runs after the approval (recorded) or straight from approval_needed.
        @task(task_id=PUBLISH, trigger_rule="none_failed_min_one_success")
        def publish_preliminary_results():
            from mai_ops import tasks

            when, _ = run_info(get_current_context())
            return organizer_errors_fail_fast(tasks.publish_preliminary_results, path, when)

        from airflow.providers.standard.operators.hitl import ApprovalOperator

        review = review_results()
        approve = ApprovalOperator(
            task_id=APPROVE,
            subject=f"Publish the preliminary results of {challenge.title}?",
            body=f"{{{{ ti.xcom_pull(task_ids='{REVIEW}')['markdown'] }}}}",
            notifiers=approval_request(challenge),
            # Reject skips publishing too, whatever its trigger rule.
            ignore_downstream_trigger_rules=True,
            # An approval waits as long as it takes (not the tasks' 30-minute timeout).
            execution_timeout=None,
            response_timeout=None,
        )
        publish = publish_preliminary_results()
        approval_needed(review) >> [approve, publish]
        approve >> record_approval(review, approve.output) >> publish

    return preliminary_results()


for_each_challenge(PHASE, build)
