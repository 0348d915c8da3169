"""Features: Spark preprocessing of validated ratings into per-user histories, the movie
table, id vocabularies, the evaluation split assignment and corpus statistics."""
