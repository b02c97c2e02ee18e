"""The training setup every benchmark of training steps times, in one place.

``ab_steps.py``, ``epoch_vs_torch.py``, ``layers_vs_torch.py`` and ``test_training_step.py``
all time the steps ``convlab train`` runs by default: batches of 64, SGD with momentum 0.9,
seed 0. The learning rate is 0.01 (``convlab train``'s is 0.02, cosine-annealed): a step's
speed does not depend on the rate. PyTorch's twins (in ``epoch_vs_torch.py`` and
``test_training_step.py``) get the same values, so that both sides train the same way.
"""

BATCH_SIZE, LR, MOMENTUM, SEED = 64, 0.01, 0.9, 0
