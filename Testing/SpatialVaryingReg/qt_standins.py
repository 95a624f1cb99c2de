"""Minimal stand-ins for the Qt/CTK/MRML widget classes that Slicer's parameterNodeWrapper connects to.

Only what the wrapper's GUI connectors and the module widget use: properties as attributes, signals
with ``connect``/``disconnect``/``emit``, combo-box items with data. ``ui_from_file`` builds one
stand-in per ``<widget>`` of a Qt Designer file, like ``slicer.util.childWidgetVariables``.
"""
from __future__ import annotations

import inspect
import types
import xml.etree.ElementTree as ET
from pathlib import Path


class Signal:
    def __init__(self) -> None:
        self._slots: list = []

    def connect(self, slot) -> None:
        self._slots.append(slot)

    def disconnect(self, slot) -> None:
        self._slots.remove(slot)

    def emit(self, *args) -> None:
        """Call each slot with as many of the arguments as it takes (as PythonQt does)."""
        for slot in list(self._slots):
            try:
                params = inspect.signature(slot).parameters.values()
            except (TypeError, ValueError):
                slot(*args)
                continue
            if any(p.kind == p.VAR_POSITIONAL for p in params):
                slot(*args)
            else:
                slot(*args[:sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)])


class QWidget:
    """A widget: properties (``property``/``setProperty``), ``enabled``, ``visible``, ``toolTip``."""

    SIGNALS: tuple[str, ...] = ()

    def __init__(self, name: str = "") -> None:
        self._properties: dict = {}
        self._blocked = False
        self.objectName, self.enabled, self.visible, self.toolTip, self.text = name, True, True, "", ""
        for signal in self.SIGNALS:
            setattr(self, signal, Signal())

    def property(self, name):
        return self._properties.get(name)

    def setProperty(self, name, value) -> None:
        self._properties[name] = value

    def blockSignals(self, block: bool) -> bool:
        was, self._blocked = self._blocked, block
        return was

    def _emit(self, signal: str, *args) -> None:
        if not self._blocked:
            getattr(self, signal).emit(*args)

    def setVisible(self, visible: bool) -> None:
        self.visible = visible

    def connect(self, signature: str, slot) -> None:
        """PythonQt's ``widget.connect("valueChanged(int)", slot)``."""
        getattr(self, signature.split("(")[0]).connect(slot)


class _Valued(QWidget):
    """A widget whose assignment to ``attribute`` emits ``signal`` when the value changes."""

    ATTRIBUTE, SIGNAL, DEFAULT = "value", "valueChanged", 0

    def __init__(self, name: str = "") -> None:
        object.__setattr__(self, "_value", self.DEFAULT)
        super().__init__(name)

    def __getattr__(self, name):
        if name == type(self).ATTRIBUTE:
            return self._value
        raise AttributeError(name)

    def __setattr__(self, name, value) -> None:
        if name == type(self).ATTRIBUTE:
            changed = value != self._value
            object.__setattr__(self, "_value", value)
            if changed:
                self._emit(type(self).SIGNAL, value)
        else:
            object.__setattr__(self, name, value)


class QCheckBox(_Valued):
    ATTRIBUTE, SIGNAL, DEFAULT, SIGNALS = "checked", "stateChanged", False, ("stateChanged", "toggled")


class QPushButton(QWidget):
    SIGNALS = ("clicked", "toggled")
    checkable = False
    checked = False


class QLineEdit(_Valued):
    ATTRIBUTE, SIGNAL, DEFAULT, SIGNALS = "text", "textChanged", "", ("textChanged",)


class QLabel(QWidget):
    pass


class QTextEdit(_Valued):
    ATTRIBUTE, SIGNAL, DEFAULT, SIGNALS = "plainText", "textChanged", "", ("textChanged",)


class _Ranged(_Valued):
    SIGNALS = ("valueChanged",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.minimum, self.maximum, self.decimals, self.singleStep = 0, 99, 2, 1

    def setRange(self, low, high) -> None:
        self.minimum, self.maximum = low, high

    def setMinimum(self, low) -> None:
        self.minimum = low

    def setMaximum(self, high) -> None:
        self.maximum = high

    def setValue(self, value) -> None:
        self.value = value


class QSpinBox(_Ranged):
    pass


class QSlider(_Ranged):
    """A slider: ``value`` set by code or by the user's hand (``drag``, then ``release``)."""

    SIGNALS = ("valueChanged", "sliderReleased")

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._down = False

    def isSliderDown(self) -> bool:
        return self._down

    def drag(self, *positions: int) -> None:
        """The user drags the handle through ``positions`` (``valueChanged`` for each, the handle held down)."""
        self._down = True
        for position in positions:
            self.value = position

    def release(self) -> None:
        """The user lets go of the handle (``sliderReleased``)."""
        self._down = False
        self._emit("sliderReleased")


class QDoubleSpinBox(_Ranged):
    DEFAULT = 0.0


class QComboBox(_Valued):
    """Items with text and data; ``currentIndex`` (-1 when empty) emits ``currentIndexChanged``."""

    ATTRIBUTE, SIGNAL, DEFAULT, SIGNALS = "currentIndex", "currentIndexChanged", -1, ("currentIndexChanged",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._items: list[list] = []

    @property
    def count(self) -> int:
        return len(self._items)

    @property
    def currentText(self) -> str:
        return self._items[self.currentIndex][0] if 0 <= self.currentIndex < len(self._items) else ""

    def clear(self) -> None:
        self._items = []
        self.currentIndex = -1

    def addItem(self, text, data=None) -> None:
        self._items.append([str(text), data, None])
        if self.currentIndex < 0:
            self.currentIndex = 0

    def itemText(self, index: int) -> str:
        return self._items[index][0]

    def itemData(self, index: int):
        return self._items[index][1]

    def setItemData(self, index: int, value, role=None) -> None:
        self._items[index][2] = value

    def findData(self, data) -> int:
        return next((i for i, item in enumerate(self._items) if item[1] == data), -1)


class QColor:
    pass


class QTimer:
    def __init__(self) -> None:
        self.active, self.interval = False, 0

    def setInterval(self, ms: int) -> None:
        self.interval = ms

    def connect(self, signal: str, slot) -> None:
        self.slot = slot

    def start(self) -> None:
        self.active = True

    def stop(self) -> None:
        self.active = False

    @staticmethod
    def singleShot(ms: int, slot) -> None:
        slot()


class _ProxyModel:
    hiddenNodeIDs: list = []


class qMRMLNodeComboBox(QWidget):
    SIGNALS = ("currentNodeChanged",)

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._node = None
        self.nodeTypes, self.showChildNodeTypes, self._proxy = [], True, _ProxyModel()

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node) -> None:
        if node is not self._node:
            self._node = node
            self._emit("currentNodeChanged", node)

    def sortFilterProxyModel(self):
        return self._proxy


def qt_module() -> types.ModuleType:
    mod = types.ModuleType("qt")
    for cls in (QWidget, QCheckBox, QPushButton, QLineEdit, QLabel, QTextEdit, QSpinBox, QSlider, QDoubleSpinBox,
                QComboBox, QColor, QTimer):
        setattr(mod, cls.__name__, cls)
    mod.Qt = types.SimpleNamespace(ToolTipRole=3)
    return mod


def ctk_module() -> types.ModuleType:
    """CTK classes the connectors test with ``type(widget) ==``: distinct classes none of the .ui uses."""
    mod = types.ModuleType("ctk")
    for name in ("ctkCheckBox", "ctkCheckablePushButton", "ctkSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox",
                 "ctkComboBox", "ctkRangeWidget", "ctkDoubleRangeSlider", "ctkPathLineEdit", "ctkDirectoryButton",
                 "ctkColorPickerButton", "ctkCollapsibleButton"):
        setattr(mod, name, type(name, (QWidget,), {}))
    return mod


MRML_WIDGETS = {"qMRMLNodeComboBox": qMRMLNodeComboBox}


def ui_from_file(path: Path, qt, ctk) -> types.SimpleNamespace:
    """One stand-in per named ``<widget>`` of a .ui file, with its ``SlicerParameterName`` property."""
    ui = types.SimpleNamespace()
    for element in ET.parse(path).getroot().iter("widget"):
        cls_name, name = element.get("class"), element.get("name")
        cls = MRML_WIDGETS.get(cls_name) or getattr(qt, cls_name, None) or getattr(ctk, cls_name, None)
        if cls is None:  # containers, progress bars, tables...: plain widgets
            cls = type(cls_name, (QWidget,), {})
        widget = cls(name)
        for prop in element.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                widget.setProperty("SlicerParameterName", prop.find("string").text)
        setattr(ui, name, widget)
    return ui
