"""Batched forms of the block modules: several calls of one block as one computation.

Each function here is named by a block's ``Fusion.batched`` declaration and called by the
compiled model for a group of the fusion plan (``mtl_dsl.passes.fuse``) as
``fn(modules, shared, *inputs) -> list`` (see ``mtl_dsl.blocks.registry.Fusion``). ``layers``
has the batched layers they are made of; the other files follow the module families.
"""
