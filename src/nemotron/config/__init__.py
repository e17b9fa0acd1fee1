"""What to evaluate and how: the config's schema and loading (`schema`), cluster profiles from env.toml
(`profiles`), a request as it arrives from the CLI, a deployment run or a trigger, with what other people may set
(`request`), model references and their resolution (`models`), and the secret values every output is masked by
(`secrets`)."""
