"""The steps of the loop, one module each, as declared in :data:`pipelines.context.SPECS`: each has
``run(ctx) -> dict`` and reads only the inputs and results its spec names. No step imports another step."""
