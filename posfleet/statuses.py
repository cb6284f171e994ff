"""The update pipeline's status vocabulary, and the one rule that turns what a run recorded into an outcome.

Every other part imports these names: the pos_record action (which refuses any other status), the settle
play (through the pos_rollout_outcomes and pos_spends_budget filters), the posfleet_report callback, the
rollout filters and the error budget (posfleet.rollout), the report (posfleet.report) and its schema,
whose enums a test checks against OUTCOMES. docs/update-pipeline.md explains each status.
"""

# A terminal on its way through the update: the survey found it ready, no step has decided otherwise yet.
GO = "go"

CURRENT = "current"            # already ran the release; nothing was done
UPDATED = "updated"            # the update ran and its verification passed
DEFERRED = "deferred"          # left untouched for now (window, readiness, the budget, or the run ended)
UNFIT = "unfit"                # left untouched for good: its model's flash is smaller than the release needs
FAILED = "failed"              # a step failed and nothing needed undoing, or it could not be undone from here
ROLLED_BACK = "rolled_back"    # a step failed after the backup and the terminal was put back as it was
UNREACHABLE = "unreachable"    # did not answer, or stopped answering in the middle of its update
WOULD_UPDATE = "would_update"  # check mode or a plan: the update would run

# Every outcome a report shows, in the order its tables show them.
OUTCOMES = (CURRENT, UPDATED, DEFERRED, UNFIT, FAILED, ROLLED_BACK, UNREACHABLE, WOULD_UPDATE)
# The outcomes a step records on a terminal. UNREACHABLE is never recorded: it is what a terminal is
# when it has no recorded outcome (outcome() below).
RECORDED = tuple(status for status in OUTCOMES if status != UNREACHABLE)
# The terminal is at (or would reach) the release: not a problem to report.
AT_RELEASE = (CURRENT, UPDATED, WOULD_UPDATE)
# The update started on the terminal (current, deferred and unfit ones never did).
STARTED = (UPDATED, FAILED, ROLLED_BACK, WOULD_UPDATE)
# Outcomes that spend the rollout's error budget and fail the run.
SPENDING = (FAILED, ROLLED_BACK)
# Not at the release after the run, but a re-run may get it there: what retry.limit lists. Not UNFIT: no
# re-run makes a release fit the model's flash; a smaller release or retiring the model does.
RETRY = (FAILED, ROLLED_BACK, DEFERRED, UNREACHABLE)
# Why a terminal was deferred. `held`: another posfleet run holds the terminal (its lease, docs/concurrency.md).
DEFERRED_BY = ("window", "preflight", "held", "quiesce", "upload", "budget", "stopped")


def outcome(recorded):
    """A terminal's outcome from the status its steps recorded (None when they recorded none).

    A recorded outcome stands. A terminal without one was not reached, or stopped answering in the
    middle of its update (`go` left behind): unreachable either way, never a success.
    """
    return recorded if recorded in RECORDED else UNREACHABLE
