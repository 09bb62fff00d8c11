"""The sampling engine: one loop for every sampler (:mod:`.run`), its window state (:mod:`.window`),
one device round (:mod:`.round`), acceptance (:mod:`.accept`), the auto window (:mod:`.policy`), the
plan (:mod:`.plan`), the logits rows a round reads (:mod:`.rows`), CUDA graphs (:mod:`.graphs`), the
one model call and its check (:mod:`.call`) and the result (:mod:`.result`). Step rules plug in:
:mod:`pit_sampler.steps`."""
