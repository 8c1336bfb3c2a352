"""Benchmarks of the superposition service (`psp bench`).

The continual-learning benchmark (`psp bench continual`) reproduces the paper's §7: data streams
(`streams`), the compared methods (`methods`, `baselines`), the runners that train them
in-process or through the HTTP service (`runners`, `http_runner`), the experiment loop
(`continual`), its metrics (`metrics`), memory footprints (`footprint`), plots (`plots`) and the
command line (`cli`).

It builds on `psp_core` alone and reaches the service only through its HTTP contract. Its own
dependencies (scikit-learn, matplotlib) come with the `bench` extra:
`pip install 'psp-service[bench]'`.
"""
