"""DDQA: defect question sets built by rules from a labelled dataset (EIAD's DDQA-set), the
evaluator that answers them through the runtime, and the findings → explanation corpus."""
