"""The training half of the loop: recipes, a locally built tiny model, data preparation and SFT."""
