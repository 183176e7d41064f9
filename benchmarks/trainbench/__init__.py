"""The training benchmark behind ``benchmarks/run_benchmarks.py``.

``cases`` says what each case trains and builds it the way users write it today; ``measure`` reads
memory, optimizer state and gradient sizes; ``scheduler`` interleaves the cases step by step so that
machine drift hits them all alike; ``report`` turns the results into JSON, Markdown and a chart. ``perf_callback``
times the steps of a real recipe run (``benchmarks/timed_recipe.py``, used by ``scripts/gpu_check.sh``).
"""
