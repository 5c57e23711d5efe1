"""Compress to a latency target: slimkit picks each layer's form (dense fp32 or int8, a narrower channel width,
block-sparse int8, binary) from the layer's latency measured on this CPU in the engine it deploys to, and its
cost to the user's loss, then writes the per-layer recipe the run fine-tunes, exports and measures.

- config: TargetConfig, the recipe's `target:` section;
- forms: the forms, and the ordinary recipe stages that give layers their forms;
- groups: channel groups that share one width (from the channel graph);
- cache, tables: each layer's time per form (median, IQR), measured alone and cached per CPU identity;
- sensitivity: each form's one-shot loss increase on calibration batches;
- solver: one form per layer and one width per group, at the least loss, to reach the target;
- choose: all of the above from a trained dense model to the stages; outcome: the target against the run's
  own measurement; markdown: the report's section.

Import each name from its module: this file imports nothing, so the report can read the markdown module
without loading the engines.
"""
