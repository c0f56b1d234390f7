"""The tracers built on the mechanisms: function, function_graph, probe events; trace clocks."""
