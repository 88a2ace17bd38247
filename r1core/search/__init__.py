"""Test-time compute: choosing among samples (majority vote, best-of-N, weighted best-of-N),
verifiers (exact rule-based ones for countdown and arithmetic), PRM step-score aggregation,
pass@k and maj@k, and the one result type. The engine-driven searches (beam, MCTS) build on these."""
from .curves import accuracy_by_budget
from .metrics import maj_at_k, mean_pass_at_k, pass_at_k
from .result import Candidate, SearchResult
from .sampling import METHODS, sample_and_select, select
from .verifiers import AGGREGATIONS, ArithmeticVerifier, CountdownVerifier, Verifier, aggregate_step_scores
from .voting import best_of_n, group_answers, majority_vote, weighted_best_of_n

__all__ = [
    "majority_vote", "best_of_n", "weighted_best_of_n", "group_answers", "pass_at_k", "mean_pass_at_k", "maj_at_k",
    "SearchResult", "Candidate", "select", "sample_and_select", "METHODS", "Verifier", "CountdownVerifier",
    "ArithmeticVerifier", "aggregate_step_scores", "AGGREGATIONS", "accuracy_by_budget",
]
