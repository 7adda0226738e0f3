"""The label path: online learners, their evaluation, drift monitors, retrain requests, checkpoints.

Labels arrive after their events; the worker joins each to the vector it served
(:mod:`streaming.worker.learn`), an :class:`~streaming.online.learners.OnlineLearner` learns from
it, an :class:`~streaming.online.evaluator.OnlineEvaluator` scores every scorer prequentially, and
a :class:`~streaming.online.monitor.MonitorGroup` watches the error, the scores and the features
and turns a drift into one :class:`~streaming.online.request.RetrainRequest`, which the retrain job
(:mod:`streaming.online.retrain`) acts on. Import the submodules directly; this package imports
nothing, so that loading a pipeline does not load River.
"""
