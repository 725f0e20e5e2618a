"""Custom kernels the expert banks can run: each is registered as a torch operator with a shape
function, so it traces, counts (fvcore) and runs on the meta device like any aten op."""
