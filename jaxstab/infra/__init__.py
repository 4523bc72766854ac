"""Infrastructure under every part: files local or in a bucket (fs), the workdir lock,
orbax checkpoints, the one error type users see, the tools' command-line convention, log
quieting and parameter paths. It imports nothing else of jaxstab."""
