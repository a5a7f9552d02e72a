"""Scoring restored faces: folder evaluation, the boost table (base vs base + refiner) and its charts."""
