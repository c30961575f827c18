"""The networks: text encoder, triplane generator, field MLP, and the model that joins them."""
