from visattn.tasks.classify import ClassificationModule

__all__ = ["ClassificationModule"]
