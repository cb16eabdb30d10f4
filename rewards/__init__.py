"""Social-emotional reward models, the safety penalty and their composition."""
