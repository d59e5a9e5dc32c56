"""The project's bottom layer: conventions, file formats, the stage cache, image/database records, errors.

Nothing here imports any other package of this project.
"""
