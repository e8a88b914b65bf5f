"""autotune: the library call that picks the fastest validated strategy for the user's own model (`from bench import
autotune`), with the suite's own validation, timing and verdict rule.

    autotune.py    the call: autotune(model, example_x, ...) -> Tuned (what a user reads first)
    options.py     its arguments checked and resolved once (Settings), and AutotuneError
    tuned.py       Tuned: the pick as a function, tuned(x) -> J, tuning again for an input it has not seen
    tuning.py      one pick: from a measured run, else the cache, else validated and raced
    candidates.py  who may be picked and whether each is valid here: refusals, first calls, the float64 reference
    race.py        the valid candidates timed together as a run times a shape, and the verdict
    pick.py        Pick: what was chosen and why (what the cache keeps)
    runs.py        picks from finished runs (results=)
    explain.py     tuned.explain(): the pick in words
    cache.py       picks remembered per model structure and input, in this process and in one JSON file

Nothing here imports pytest, pandas or matplotlib (runs.py reads result files through the report side only when
results= is given); the harness is reached through its public functions.
"""
