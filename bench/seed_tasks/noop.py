from message_queue_sqlite import task_function


@task_function()
def noop(i=0):
    return i
