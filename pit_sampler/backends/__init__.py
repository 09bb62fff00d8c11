"""Optional fast backends; each module registers itself with :mod:`pit_sampler.ops` when usable."""
