"""Benchmarks of the superposition service (`psp bench`).

The continual-learning benchmark (`psp bench continual`) reproduces the paper's §7: data sets
(`datasets`) and the streams drawn from them (`streams`, and the tenants stream in `tenants`),
the compared methods (`methods`; the baselines in `baselines`, `tenant_models` and
`river_runner`), the runners that train them in-process or through the HTTP service (`runners`,
`http_runner`), the experiment loop (`continual`) with its settings (`continual_config`) and
results (`continual_results`), its metrics (`metrics`), memory footprints (`footprint`), plots
(`plots`) and the command line (`cli`).

It builds on `psp_core` alone and reaches the service only through its HTTP contract. Its own
dependencies (scikit-learn, matplotlib, river) come with the `bench` extra:
`pip install 'psp-service[bench]'`.
"""
