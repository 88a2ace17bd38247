"""Test-time compute: choosing among samples (majority vote, best-of-N, weighted best-of-N),
step-wise search against a verifier (PRM beam search, diverse verifier tree search, MCTS) through a
step generator (the engine: a step is a sample up to a delimiter), verifiers (exact rule-based ones
for countdown and arithmetic; trained outcome and process reward models), PRM step-score
aggregation, pass@k and maj@k, and the one result type."""
from .beam import beam_search, beam_search_steps, diverse_verifier_tree_search, dvts_steps
from .curves import accuracy_by_budget
from .mcts import mcts, mcts_steps
from .metrics import maj_at_k, mean_pass_at_k, pass_at_k
from .result import Candidate, SearchResult
from .reward_models import (
    OutcomeRewardModel,
    ProcessRewardModel,
    RewardExample,
    RewardModel,
    build_reward_model,
    math_shepherd_labels,
    shepherd_examples,
    train_reward_model,
)
from .sampling import METHODS, sample_and_select, select
from .scoring import Partial, verifier_scorer
from .step_generator import BranchStepGenerator, EngineStepGenerator, StepGenerator, StepProposal, StepRequest, drive, drive_many
from .verifiers import AGGREGATIONS, ArithmeticVerifier, CountdownVerifier, Verifier, aggregate_step_scores
from .voting import best_of_n, group_answers, majority_vote, weighted_best_of_n

__all__ = [
    "majority_vote", "best_of_n", "weighted_best_of_n", "group_answers", "pass_at_k", "mean_pass_at_k", "maj_at_k",
    "SearchResult", "Candidate", "select", "sample_and_select", "METHODS", "Verifier", "CountdownVerifier",
    "ArithmeticVerifier", "aggregate_step_scores", "AGGREGATIONS", "accuracy_by_budget",
    "beam_search", "beam_search_steps", "diverse_verifier_tree_search", "dvts_steps", "mcts", "mcts_steps",
    "StepGenerator", "StepProposal", "StepRequest", "EngineStepGenerator", "BranchStepGenerator", "drive", "drive_many",
    "Partial",
    "verifier_scorer", "RewardModel", "RewardExample", "OutcomeRewardModel", "ProcessRewardModel", "build_reward_model",
    "train_reward_model", "math_shepherd_labels", "shepherd_examples",
]
